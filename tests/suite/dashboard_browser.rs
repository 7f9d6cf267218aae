//! The dashboard in a real headless Chromium, driven over WebDriver
//! (`chromedriver`, from Debian's `chromium-driver`): log in, watch kubia,
//! see load arrive, scale from the page, see a restart. Skipped, saying so,
//! without Chromium and its driver (required in CI: `.ci/run` installs them
//! and sets `SHOAL_REQUIRE_CHROMIUM=1`).
//!
//! The WebDriver client is the few calls of the W3C protocol the test needs,
//! over the same hyper client as every other test (no browser-automation
//! crate: their TLS stacks would bring a second one into the build).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let found = |name: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !found("chromedriver") {
        return Some("chromedriver is not installed (apt-get install chromium-driver)".into());
    }
    if !found("chromium") {
        return Some("chromium is not installed (apt-get install chromium)".into());
    }
    None
}

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        // Its own process group, which the browsers it starts join: the
        // test ends them all at once, even after a failure.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = spawn_tied(command).expect("cannot start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while call("GET", &format!("{base}/status"), None).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"]},
        }}});
        let answer = call("POST", &format!("{base}/session"), Some(capabilities)).await.expect("a session");
        let session = answer["sessionId"].as_str().expect("a session id").to_owned();
        Browser { driver, base, session }
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(method, &format!("{}/session/{}{path}", self.base, self.session), body).await
    }

    async fn open(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url}))).await.unwrap();
    }

    async fn find(&self, css: &str) -> Result<String, String> {
        let found = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        Ok(found[ELEMENT].as_str().ok_or_else(|| format!("no element id in {found}"))?.to_owned())
    }

    async fn text(&self, css: &str) -> Result<String, String> {
        let id = self.find(css).await?;
        Ok(self.command("GET", &format!("/element/{id}/text"), None).await?.as_str().unwrap_or_default().to_owned())
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        self.command("POST", &format!("/element/{id}/click"), Some(json!({}))).await.unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({}))).await.unwrap();
        self.command("POST", &format!("/element/{id}/value"), Some(json!({"text": text}))).await.unwrap();
    }

    async fn source(&self) -> String {
        self.command("GET", "/source", None).await.unwrap().as_str().unwrap_or_default().to_owned()
    }

    /// Waits up to `limit` for the text of `css` to satisfy `done`.
    async fn wait_text(&self, css: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css).await.unwrap_or_default();
            if done(&text) {
                return text;
            }
            assert!(started.elapsed() < limit, "{css}: {text:?} after {limit:?}\n{}", self.source().await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill on the process group of the chromedriver this test
        // started (its id is the group's).
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

/// One WebDriver call: its `value`, or the error it answered.
async fn call(method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", answer["value"]));
    }
    Ok(answer["value"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_browser_logs_in_shows_load_scales_and_shows_a_restart() {
    if let Some(why) = missing() {
        if std::env::var("SHOAL_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("SHOAL_REQUIRE_CHROMIUM=1 but {why}");
        }
        println!("SKIPPED: {why}");
        return;
    }
    let dir = Scratch::new("browser");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 3"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    let browser = Browser::start().await;
    let admin = shoal.server();

    // A wrong token: an error, and no data.
    browser.open(&format!("{admin}/")).await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("button[type=submit]").await;
    let error = browser.wait_text(".error", Duration::from_secs(10), |t| !t.is_empty()).await;
    assert!(error.contains("Wrong token"), "{error}");
    assert!(!browser.source().await.contains("kubia"));

    // The token: the services, kubia at 3/3.
    browser.type_into("#token", &shoal.token()).await;
    browser.click("button[type=submit]").await;
    browser.wait_text("tr[data-service=kubia] td.ready", Duration::from_secs(15), |t| t == "3/3").await;

    // Load from a client: requests/s rise on the service page within 5 s.
    browser.open(&format!("{admin}/#/service/kubia")).await;
    browser.wait_text("#ready", Duration::from_secs(10), |t| t == "3/3").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), shoal.url("/"));
        tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let _ = get_with(&client, &url, None).await;
            }
        })
    };
    let started = Instant::now();
    browser.wait_text("#rps", Duration::from_secs(5), |t| t.parse::<f64>().is_ok_and(|rps| rps > 0.0)).await;
    eprintln!("requests/s shown {:?} after the load began", started.elapsed());
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    // Scale to 5 from the page, after the confirmation.
    browser.type_into("#replicas", "5").await;
    browser.click("#scale").await;
    browser.click("#confirm-ok").await;
    browser.wait_text("#ready", Duration::from_secs(30), |t| t == "5/5").await;
    assert_eq!(shoal.worker_pids().len(), 5);

    // A worker killed: its restart shows in the events.
    let victim = shoal.worker_pids()[0];
    // SAFETY: kill on a worker of this test's shoal.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let events = browser.wait_text("#events", Duration::from_secs(15), |t| t.contains("Exited")).await;
    assert!(events.contains("restarting"), "{events}");
    let _ = browser.command("DELETE", "", None).await;
    assert!(shoal.stop().success());
}
