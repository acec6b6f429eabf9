//! The tests' Redis namespace: flushing it as a lost Redis would, and
//! reading every value in it for leak checks.

use super::Env;

impl Env {
    /// A connection to the tests' Redis and the keys of this test's namespace.
    async fn namespace_keys(&self) -> (redis::aio::MultiplexedConnection, Vec<String>) {
        self.keys(&format!("{}*", self.namespace)).await
    }

    /// A connection to the tests' Redis and the keys matching `pattern`.
    async fn keys(&self, pattern: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis is reachable");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("list keys");
        (conn, keys)
    }

    /// Removes every key of this test's namespace, as a flushed Redis would.
    pub async fn flush_namespace(&self) {
        let (mut conn, keys) = self.namespace_keys().await;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .expect("delete keys");
        }
    }

    /// Every value stored under this test's namespace, for leak checks.
    pub async fn redis_dump(&self) -> String {
        self.redis_dump_matching(&format!("{}*", self.namespace))
            .await
    }

    /// Every key matching `pattern` and its value, one key a line.
    pub async fn redis_dump_matching(&self, pattern: &str) -> String {
        let (mut conn, keys) = self.keys(pattern).await;
        let mut out = String::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("type");
            let value: redis::Value = match kind.as_str() {
                "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await,
                "list" => {
                    redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
                "set" => {
                    redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                }
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
                _ => redis::cmd("GET").arg(&key).query_async(&mut conn).await,
            }
            .expect("read a key");
            out.push_str(&key);
            flatten(&value, &mut out);
            out.push('\n');
        }
        out
    }
}

fn flatten(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => {
            out.push(' ');
            out.push_str(&String::from_utf8_lossy(bytes));
        }
        redis::Value::SimpleString(text) => {
            out.push(' ');
            out.push_str(text);
        }
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|item| flatten(item, out));
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        other => out.push_str(&format!(" {other:?}")),
    }
}
