//! The console in a real browser: headless Chromium driven through
//! ChromeDriver signs in with the token, retries a failed event, resolves a
//! conflict, pauses and resumes, downloads the erasures CSV, opens a user's
//! page and fits a phone's screen. It saves a screenshot of the overview
//! as `docs/console.png`, the one in the README.
//!
//! Skipped, saying so, only where neither Chromium nor ChromeDriver is
//! installed (`.ci/run` installs both); one without the other fails.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::console::{TOKEN, WITH_TOKEN};
use common::process::Running;
use common::{Backend, Env, eventually};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use user_sync_sandbox::SandboxOptions;

const SETTLE: Duration = Duration::from_secs(30);
/// How long the page may take to show what a step waits for.
const SHOWS: Duration = Duration::from_secs(20);

/// The first of `candidates` that exists, else `name` on the PATH.
fn installed(candidates: &[&str], name: &str) -> Option<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// ChromeDriver on a free local port, killed with the test.
struct Driver {
    _process: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(binary: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = tokio::process::Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session that saves downloads in `downloads`.
    async fn session(&self, chromium: &Path, downloads: &Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,1000",
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                },
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

/// The text of the first element `css` finds, empty when none (or hidden).
async fn text(browser: &Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn shown(browser: &Client, css: &str) -> bool {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// The element `css` finds, once it is there.
async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(SHOWS)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

async fn click(browser: &Client, css: &str) {
    element(browser, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(browser: &Client, css: &str, keys: &str) {
    element(browser, css)
        .await
        .send_keys(keys)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

async fn script(browser: &Client, js: &str) -> serde_json::Value {
    browser
        .execute(js, vec![])
        .await
        .unwrap_or_else(|e| panic!("{js}: {e}"))
}

/// Waits until the element `css` finds says `words`.
async fn says(browser: &Client, css: &str, words: &str) {
    let what = format!("{css} saying {words:?}");
    eventually(SHOWS, &what, || async {
        text(browser, css).await.contains(words)
    })
    .await;
}

/// An hour of outbox history, written as the worker leaves finished
/// events (of transactions its sweeper walked past, a reason where they
/// did not apply, their ends counted per minute), so that the chart has
/// every minute to draw: synthetic, for the overview's screenshot, and
/// never failed (the failed list stays the test's own).
async fn an_hour_of_history(env: &Env) {
    env.execute(
        "WITH history AS (
             INSERT INTO user_sync.events
                 (host_user_id, kind, state, reason, occurred_at, dispatched_at, finished_at, txid)
             SELECT 'history-' || m || '-' || k, 'signup', s.state,
                    CASE WHEN s.state IN ('invalid', 'conflict') THEN 'synthetic' END,
                    now() - make_interval(mins => m), now() - make_interval(mins => m),
                    now() - make_interval(mins => m), '3'::xid8
             FROM generate_series(1, 59) AS m,
                  LATERAL generate_series(1, 4 + (m * 7) % 13 + (m % 20) / 2) AS k,
                  LATERAL (SELECT CASE WHEN k = 1 AND m % 9 = 0 THEN 'invalid'
                                       WHEN k = 2 AND m % 7 = 3 THEN 'conflict'
                                       WHEN k % 6 = 0 THEN 'superseded'
                                       ELSE 'applied' END AS state) s
             RETURNING state, finished_at)
         INSERT INTO user_sync.finished_counts (minute, state, events)
         SELECT date_trunc('minute', finished_at), state, count(*) FROM history GROUP BY 1, 2",
        0,
    )
    .await;
}

/// Saves the overview beside the test's build, and as `docs/console.png`
/// when that is missing or `USER_SYNC_UPDATE_SCREENSHOT=1` asks for a new
/// one: a test run leaves the repository's picture as it was.
async fn save_screenshot(browser: &Client) {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let built = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::write(&built, &png).expect("save the screenshot");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
    if !docs.is_file() || std::env::var_os("USER_SYNC_UPDATE_SCREENSHOT").is_some_and(|v| v == "1")
    {
        std::fs::create_dir_all(docs.parent().expect("docs/")).expect("docs/");
        std::fs::write(&docs, &png).expect("save docs/console.png");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let chromium = installed(
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "chromium",
    );
    let chromedriver = installed(&["/usr/bin/chromedriver"], "chromedriver");
    let (chromium, chromedriver) = match (chromium, chromedriver) {
        (None, None) => {
            eprintln!(
                "skipped: neither chromium nor chromedriver is installed \
                 (apt-get install chromium chromium-driver)"
            );
            return;
        }
        (Some(chromium), Some(driver)) => (chromium, driver),
        (chromium, driver) => panic!(
            "the browser test needs both chromium ({chromium:?}) and chromedriver ({driver:?})"
        ),
    };

    let env = Env::start_on(Backend::Postgres, SandboxOptions::default()).await;
    let outside = env.sandbox.insert_user("outside@example.com", None);
    let run = Running::with(
        &env,
        &[WITH_TOKEN[0], ("USER_SYNC__WORKER__MAX_ATTEMPTS", "2")],
    )
    .await;
    env.signup("a", "same@example.com", None).await;
    env.signup("leaving", "leaving@example.com", Some("Lea"))
        .await;
    env.settle(SETTLE).await;
    env.signup("c", "outside@example.com", Some("Carla")).await;
    env.closure("leaving").await;
    env.settle(SETTLE).await;
    env.fail_every_call(true);
    let failed = env.signup("f1", "f1@example.com", None).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(failed).await.0, "failed");
    env.fail_every_call(false);
    an_hour_of_history(&env).await;

    let downloads = tempfile::tempdir().expect("a downloads folder");
    let driver = Driver::start(&chromedriver).await;
    let browser = driver.session(&chromium, downloads.path()).await;
    let console = format!("http://{}/console", run.worker.ops_addr);

    // Sign in: the token goes to sessionStorage, never to a cookie.
    browser.goto(&console).await.expect("open the console");
    type_into(&browser, "#token", "not-the-token").await;
    click(&browser, "#sign-in-form button").await;
    says(&browser, "#sign-in-error", "refused").await;
    assert!(!shown(&browser, "#tabs").await);
    element(&browser, "#token")
        .await
        .clear()
        .await
        .expect("clear it");
    type_into(&browser, "#token", TOKEN).await;
    click(&browser, "#sign-in-form button").await;
    eventually(SHOWS, "the overview counts the failed event", || async {
        text(&browser, "#m-failed").await == "1"
    })
    .await;
    assert_eq!(
        script(
            &browser,
            "return sessionStorage.getItem('user-sync-console-token')"
        )
        .await,
        json!(TOKEN)
    );
    assert_eq!(script(&browser, "return document.cookie").await, json!(""));
    assert_eq!(text(&browser, "#m-conflicts").await, "1");
    eventually(SHOWS, "the chart draws the hour", || async {
        browser
            .find_all(Locator::Css("#chart rect"))
            .await
            .map_or(0, |bars| bars.len())
            > 59
    })
    .await;
    // Two readings of the gate: the rate in use is shown.
    says(&browser, "#m-rate", "%").await;
    save_screenshot(&browser).await;

    // A failed event, with its reason, sent again.
    click(&browser, "#tabs a[data-view=failed]").await;
    let row = "#failed-rows tr[data-host=f1]";
    eventually(SHOWS, "f1's failed event is listed", || async {
        !text(&browser, row).await.is_empty()
    })
    .await;
    let reason = text(&browser, &format!("{row} td.reason")).await;
    assert!(!reason.is_empty(), "a failure says why");
    assert!(!text(&browser, row).await.contains("f1@example.com"));
    click(&browser, &format!("{row} button.retry")).await;
    says(&browser, "#toast", "1 event(s) back to pending").await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(failed).await.0, "applied");
    click(&browser, "#tabs a[data-view=failed]").await;
    eventually(SHOWS, "no failed event is left", || async {
        shown(&browser, "#failed-empty").await
    })
    .await;

    // A conflict adopted, with a note.
    click(&browser, "#tabs a[data-view=conflicts]").await;
    let row = "#conflict-rows tr[data-host=c]";
    says(&browser, row, "outside@example.com").await;
    type_into(&browser, &format!("{row} input.note"), "ticket 9").await;
    click(&browser, &format!("{row} button[data-action=adopt]")).await;
    says(&browser, "#toast", "adopted").await;
    assert_eq!(
        env.embedded_id("c").await.as_deref(),
        Some(outside.as_str())
    );
    let ending: Vec<(Option<String>, Option<String>)> = env
        .pairs("SELECT resolved_by, note FROM user_sync.conflicts WHERE host_user_id = 'c'")
        .await;
    assert_eq!(ending, [(Some("console".into()), Some("ticket 9".into()))]);

    // Pause and resume; what the page shows of the reason is text.
    let reason = "INC-3 <img src=x onerror=\"document.title='pwned'\">";
    click(&browser, "#tabs a[data-view=overview]").await;
    type_into(&browser, "#pause-reason", reason).await;
    click(&browser, "#pause-button").await;
    eventually(SHOWS, "the page shows the pause", || async {
        shown(&browser, "#paused-badge").await
    })
    .await;
    assert!(text(&browser, "#pause-state").await.contains(reason));
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.pause WHERE paused_at IS NOT NULL")
            .await,
        1
    );
    click(&browser, "#resume-button").await;
    eventually(SHOWS, "the page shows the pause lifted", || async {
        !shown(&browser, "#paused-badge").await
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.pause WHERE paused_at IS NOT NULL")
            .await,
        0
    );
    assert_ne!(browser.title().await.expect("a title"), "pwned");

    // The erasures, and their CSV downloaded as the page saves it.
    click(&browser, "#tabs a[data-view=erasures]").await;
    says(&browser, "#erasure-rows tr[data-host=leaving]", "deleted").await;
    click(&browser, "#download-erasures").await;
    let file = downloads.path().join("erasures.csv");
    eventually(SHOWS, "erasures.csv is downloaded", || async {
        file.is_file()
    })
    .await;
    let csv = std::fs::read_to_string(&file).expect("read the download");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "host_user_id,embedded_user_id,outcome,requested_at,logs_deleted_at,\
             logs_skipped,user_deleted_at,completed_at"
        )
    );
    assert!(
        lines.any(|l| l.starts_with("leaving,") && l.contains(",deleted,")),
        "{csv}"
    );

    // A search opens the user's page, the username masked until revealed.
    type_into(&browser, "#search-id", "c").await;
    click(&browser, "#search button").await;
    says(&browser, "#user-mapping", &outside).await;
    assert!(
        text(&browser, "#user-mapping")
            .await
            .contains("o***@e***.com")
    );
    click(&browser, "#reveal").await;
    says(&browser, "#user-mapping", "outside@example.com").await;

    // A phone: nothing wider than the screen.
    browser
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    for view in ["overview", "failed", "conflicts", "erasures", "user/c"] {
        browser
            .goto(&format!("{console}#{view}"))
            .await
            .expect("open a view");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fits = script(
            &browser,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
        )
        .await;
        assert_eq!(fits, json!(true), "#{view} fits a phone's width");
    }

    // Signing out forgets the token.
    click(&browser, "#sign-out").await;
    assert!(shown(&browser, "#view-sign-in").await);
    assert_eq!(
        script(&browser, "return sessionStorage.length").await,
        json!(0)
    );

    browser.close().await.expect("close the browser");
    run.stop().await;
    env.finish().await;
}
