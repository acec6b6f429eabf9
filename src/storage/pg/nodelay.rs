//! `TCP_NODELAY` on the worker's database connections.
//!
//! sqlx leaves Nagle's algorithm on and offers no socket option. Any
//! statement whose message outgrows the socket's first send buffer (16 KiB
//! on Linux: a page lookup binding 1,000 usernames, a batch of claims) is
//! written in two parts, and Nagle holds the second part back until the
//! server acknowledges the first, which the server delays by its delayed-ACK
//! timer (40 ms) because it is still waiting for the rest of the message.
//! Measured on the backfill's dry run: 100,000 users took 10.9 s over TCP
//! and 2.0 s over a Unix socket, the whole difference in those stalls.
//!
//! The pool's `after_connect` asks the server which ports the connection
//! uses (`inet_client_port()`, `inet_server_port()`), finds this process's
//! socket with that local and peer port among its own file descriptors, and
//! sets the option on it. Where the ports do not match (a proxy or NAT in
//! between, a Unix socket, a system without `/proc`) nothing is changed and
//! the connection works as before.

/// Sets `TCP_NODELAY` on this process's TCP sockets whose local port is
/// `local_port` and peer port is `peer_port`; returns how many it set.
#[cfg(target_os = "linux")]
pub fn enable(local_port: u16, peer_port: u16) -> usize {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in entries.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_socket || fd < 0 {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the few system calls
        // below. Should another thread close it meanwhile, they fail with
        // EBADF; should the number be reused, the ports are checked before
        // anything is set, and the only thing ever set is `TCP_NODELAY` on a
        // TCP connection to the same database port, which is what every
        // such connection of this process wants.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let port_of = |addr: std::io::Result<socket2::SockAddr>| {
            addr.ok().and_then(|a| a.as_socket()).map(|a| a.port())
        };
        if socket.r#type().ok() != Some(socket2::Type::STREAM)
            || port_of(socket.local_addr()) != Some(local_port)
            || port_of(socket.peer_addr()) != Some(peer_port)
        {
            continue;
        }
        if socket.set_tcp_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

/// Elsewhere the connection keeps the system's default.
#[cfg(not(target_os = "linux"))]
pub fn enable(_local_port: u16, _peer_port: u16) -> usize {
    0
}

/// The `after_connect` step: looks the connection's ports up and sets the
/// option. Never fails the connection: at worst it stays as sqlx made it.
pub async fn after_connect(conn: &mut sqlx::PgConnection) {
    let ports: Result<(Option<i32>, Option<i32>), _> =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
            .fetch_one(conn)
            .await;
    let Ok((Some(client), Some(server))) = ports else {
        // A Unix socket has no ports, and needs nothing.
        return;
    };
    let (Ok(client), Ok(server)) = (u16::try_from(client), u16::try_from(server)) else {
        return;
    };
    let set = enable(client, server);
    tracing::trace!(set, "TCP_NODELAY on the database connection");
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sets_the_option_on_the_matching_socket_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind on loopback");
        let server_port = listener.local_addr().expect("listener address").port();
        let ours = tokio::net::TcpStream::connect(("127.0.0.1", server_port))
            .await
            .expect("connect");
        let other = tokio::net::TcpStream::connect(("127.0.0.1", server_port))
            .await
            .expect("connect");
        assert!(!ours.nodelay().expect("read the option"));

        let local = ours.local_addr().expect("local address").port();
        assert_eq!(enable(local, server_port), 1);
        assert!(ours.nodelay().expect("read the option"));
        assert!(
            !other.nodelay().expect("read the option"),
            "a socket with another local port is left alone"
        );
        // Same local port, another peer port: not ours either.
        assert_eq!(enable(local, server_port.wrapping_add(1)), 0);
    }
}
