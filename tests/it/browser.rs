//! The status page in a real browser: `palisade demo` (the binary) serves
//! it, headless Chromium (Debian's `chromium`) loads it and runs its
//! script, and the DOM it leaves shows three nodes and a lag chart; a
//! screenshot is taken. Without Chromium the test fails, saying so: CI
//! (`.ci/run`) installs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium on a profile of its own, with everything that would
/// reach beyond the loopback turned off.
fn chromium(profile: &Path) -> std::process::Command {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`; .ci/run does) to test the status page in a browser"
    );
    let mut command = std::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Runs Chromium to the end (within two minutes); its stdout.
async fn run(mut command: std::process::Command) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("chromium finishes within 2 minutes")
    .unwrap()
    .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts `palisade demo` on free ports; the child and its status page URL.
async fn demo(log: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("status: ") {
                return url.to_owned();
            }
        }
        panic!(
            "the demo ended without a status line:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
    .await
    .expect("the demo prints its status page within 3 minutes");
    // Keep reading, so the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// The number of times `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn the_status_page_shows_three_nodes_and_a_lag_chart_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = demo(&dir.path().join("demo.log")).await;

    let mut dump = chromium(&dir.path().join("profile-dom"));
    dump.args(["--virtual-time-budget=5000", "--dump-dom", &url]);
    let dom = run(dump).await;
    let polls = dom
        .split("data-polls=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("the page's script never drew a poll:\n{dom}"));
    assert!(polls >= 2, "{polls} polls drawn");
    assert_eq!(
        count(&dom, "<tr class=\"node\""),
        3,
        "three node rows:\n{dom}"
    );
    assert_eq!(count(&dom, "data-role=\"primary\""), 1, "{dom}");
    assert_eq!(count(&dom, "data-role=\"replica\""), 2, "{dom}");
    assert_eq!(count(&dom, "data-health=\"up\""), 3, "{dom}");
    assert!(dom.contains("class=\"lag-chart\""), "the lag chart:\n{dom}");
    let lines = count(&dom, "class=\"lag-line\"");
    assert_eq!(lines, 2, "a lag line per replica:\n{dom}");
    assert!(
        !dom.contains("data-samples=\"0\""),
        "every lag line has points:\n{dom}"
    );

    let shot: PathBuf = dir.path().join("status-page.png");
    let mut picture = chromium(&dir.path().join("profile-shot"));
    picture
        .args(["--virtual-time-budget=5000", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1280,900", &url]);
    run(picture).await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a screenshot of a drawn page, not a blank one: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("PALISADE_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // Ctrl-C: the demo drains and stops its cluster.
    let pid = child.id().expect("the demo runs");
    palisade_testkit::signal::send(pid, palisade_testkit::signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stops within a minute")
        .unwrap();
    assert!(status.success(), "the demo exits cleanly: {status}");
}
