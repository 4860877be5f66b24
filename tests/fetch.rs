//! `sweep fetch` end to end: the real binary against a tiny HTTP/1.1 server on 127.0.0.1 (a
//! random port) that serves files with ETags, answers Range/If-Range, redirects, refuses, and
//! can break a connection off part way.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What the server does for one path.
#[derive(Clone, Default)]
struct Route {
    body: Vec<u8>,
    etag: String,
    /// Send only this many body bytes of the next response, then close.
    drop_after: Option<usize>,
    /// Answer with this status and no file.
    status: Option<u16>,
    /// Answer 302 to this location.
    redirect: Option<String>,
    /// Send the body in ten pieces, 50 ms apart.
    slow: bool,
}

/// One request the server saw: its path and headers (names lowercased).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    seen: Vec<Seen>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Server { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn route(&self, path: &str, route: Route) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), route);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// Answer one request on a connection, then close it.
fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let route = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            path: path.clone(),
            headers: headers.clone(),
        });
        let route = st.routes.get(&path).cloned();
        if let Some(r) = st.routes.get_mut(&path) {
            r.drop_after = None;
        }
        route
    };
    let mut out = conn;
    let head = |status: &str, extra: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    let Some(route) = route else {
        out.write_all(head("404 Not Found", "", 9).as_bytes())?;
        out.write_all(b"not found")?;
        return Ok(());
    };
    if let Some(loc) = &route.redirect {
        out.write_all(head("302 Found", &format!("Location: {loc}\r\n"), 0).as_bytes())?;
        return Ok(());
    }
    if let Some(code) = route.status {
        out.write_all(head(&format!("{code} Refused"), "", 7).as_bytes())?;
        out.write_all(b"refused")?;
        return Ok(());
    }
    let len = route.body.len();
    // An empty etag: a server that sends no validator at all.
    let etag = if route.etag.is_empty() {
        "Accept-Ranges: bytes\r\n".to_string()
    } else {
        format!("ETag: {}\r\nAccept-Ranges: bytes\r\n", route.etag)
    };
    let from = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let validator_ok = headers.get("if-range").is_none_or(|v| *v == route.etag);
    let (status, extra, body) = match from {
        Some(n) if validator_ok && n >= len => {
            out.write_all(head("416 Range Not Satisfiable", "", 0).as_bytes())?;
            return Ok(());
        }
        Some(n) if validator_ok => (
            "206 Partial Content",
            format!("{etag}Content-Range: bytes {n}-{}/{len}\r\n", len - 1),
            &route.body[n..],
        ),
        _ => ("200 OK", etag, &route.body[..]),
    };
    out.write_all(head(status, &extra, body.len()).as_bytes())?;
    match route.drop_after {
        None if route.slow => {
            for piece in body.chunks(body.len().div_ceil(10).max(1)) {
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Some(k) => {
            out.write_all(&body[..k.min(body.len())])?;
            out.flush()?;
            out.shutdown(Shutdown::Both)?;
        }
        None => out.write_all(body)?,
    }
    Ok(())
}

/// The binary, with no proxy, token or cache settings from the environment of the test runner.
fn sweep(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sweep"));
    cmd.arg("fetch").args(args).current_dir(dir);
    for var in [
        "HF_TOKEN",
        "HF_ENDPOINT",
        "SWEEP_CACHE",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the sweep binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Bytes that differ from position to position, so that a misplaced range shows.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn file(body: &[u8], etag: &str) -> Route {
    Route {
        body: body.to_vec(),
        etag: etag.to_string(),
        ..Route::default()
    }
}

#[test]
fn downloads_checks_and_does_not_download_again() {
    let srv = Server::start();
    let body = payload(100_000, 1);
    srv.route("/files/data.bin", file(&body, "\"v1\""));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let sum = sha256(&body);
    let url = srv.url("/files/data.bin");
    let args = [
        url.as_str(),
        "--cache",
        cache.to_str().unwrap(),
        "--sha256",
        &sum,
    ];
    let o = sweep(dir.path(), &args, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(std::fs::read(cache.join("data.bin")).unwrap(), body);
    assert!(out.contains("fetched") && out.contains(&sum), "{out}");
    assert_eq!(err, "", "nothing on stderr when it is not a terminal");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "no .part or sidecar left"
    );
    assert_eq!(srv.seen().len(), 1);

    // Again, with and without the checksum: the file is there, so no request.
    let o = sweep(dir.path(), &args, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("already here") && out.contains("verified"),
        "{out}"
    );
    let o = sweep(dir.path(), &args[..3], &[]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("not verified"));
    assert_eq!(srv.seen().len(), 1, "a complete file makes no request");

    // --json says the same to a program.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let o = sweep(dir.path(), &json_args, &[]);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["downloaded"], false);
    assert_eq!(v["sha256"], sum.as_str());
    assert_eq!(v["bytes"], 100_000);
}

#[test]
fn a_broken_download_resumes_with_a_range() {
    let srv = Server::start();
    let body = payload(100_000, 2);
    srv.route(
        "/m.bin",
        Route {
            drop_after: Some(40_000),
            ..file(&body, "\"abc\"")
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/m.bin");
    let args = [url.as_str(), "--cache", "c", "--sha256", &sha256(&body)];
    let o = sweep(dir.path(), &args, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broke off after 40000 of 100000 bytes") && err.contains("again to resume"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let part = dir.path().join("c/m.bin.part");
    assert_eq!(std::fs::read(&part).unwrap(), &body[..40_000]);
    let side = std::fs::read_to_string(dir.path().join("c/m.bin.part.json")).unwrap();
    assert!(side.contains(&url) && side.contains("abc"), "{side}");
    assert!(!dir.path().join("c/m.bin").exists());

    let o = sweep(dir.path(), &args, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("resumed at"), "{out}");
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["range"], "bytes=40000-");
    assert_eq!(seen[1].headers["if-range"], "\"abc\"");
    assert_eq!(std::fs::read(dir.path().join("c/m.bin")).unwrap(), body);
    assert!(!part.exists());
    assert!(!dir.path().join("c/m.bin.part.json").exists());
}

/// A server that sends no ETag or Last-Modified: with --sha256 the download resumes by length
/// (a Range without If-Range; the hash checks the joined file), and a file whose length changed
/// meanwhile is fetched whole; without --sha256 the error says the next try starts over, and
/// it does.
#[test]
fn without_a_validator_a_download_resumes_by_length_only_when_checked() {
    let srv = Server::start();
    let body = payload(100_000, 4);
    let broken = |body: &[u8]| Route {
        drop_after: Some(30_000),
        ..file(body, "")
    };
    srv.route("/n.bin", broken(&body));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/n.bin");
    let checked = [url.as_str(), "--cache", "c", "--sha256", &sha256(&body)];
    let o = sweep(dir.path(), &checked, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("again to resume"), "{err}");
    let o = sweep(dir.path(), &checked, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("resumed at"), "{out}");
    let seen = srv.seen();
    assert_eq!(seen[1].headers["range"], "bytes=30000-");
    assert!(!seen[1].headers.contains_key("if-range"), "{:?}", seen[1]);
    assert_eq!(std::fs::read(dir.path().join("c/n.bin")).unwrap(), body);

    // The file grew meanwhile: its length differs from the first answer's, so it starts over.
    let longer = payload(120_000, 5);
    srv.route("/g.bin", broken(&body));
    let url = srv.url("/g.bin");
    let args = [url.as_str(), "--cache", "c", "--sha256", &sha256(&longer)];
    assert_eq!(sweep(dir.path(), &args, &[]).status.code(), Some(1));
    srv.route("/g.bin", file(&longer, ""));
    let o = sweep(dir.path(), &args, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(!out.contains("resumed at"), "{out}");
    assert_eq!(std::fs::read(dir.path().join("c/g.bin")).unwrap(), longer);

    // Unchecked: said to start over, and it does (no Range asked).
    srv.route("/u.bin", broken(&body));
    let url = srv.url("/u.bin");
    let args = [url.as_str(), "--cache", "c"];
    let o = sweep(dir.path(), &args, &[]);
    let (_, err) = text(&o);
    assert!(
        err.contains("so the same command starts over; give --sha256"),
        "{err}"
    );
    let o = sweep(dir.path(), &args, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let last = srv.seen().pop().unwrap();
    assert!(!last.headers.contains_key("range"), "{last:?}");
    assert_eq!(std::fs::read(dir.path().join("c/u.bin")).unwrap(), body);
}

#[test]
fn a_changed_file_starts_over() {
    let srv = Server::start();
    let old = payload(50_000, 3);
    srv.route(
        "/d.jsonl",
        Route {
            drop_after: Some(10_000),
            ..file(&old, "\"old\"")
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/d.jsonl");
    let o = sweep(dir.path(), &[&url, "--out", "d.jsonl"], &[]);
    assert_eq!(o.status.code(), Some(1));
    // The server's file changes: If-Range no longer matches, so it sends all of it (200).
    let new = payload(60_000, 4);
    srv.route("/d.jsonl", file(&new, "\"new\""));
    let o = sweep(dir.path(), &[&url, "--out", "d.jsonl"], &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(srv.seen()[1].headers["if-range"], "\"old\"");
    assert_eq!(std::fs::read(dir.path().join("d.jsonl")).unwrap(), new);
}

#[test]
fn a_checksum_mismatch_keeps_nothing() {
    let srv = Server::start();
    let body = payload(20_000, 5);
    srv.route("/w.bin", file(&body, "\"w\""));
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let o = sweep(
        dir.path(),
        &[&srv.url("/w.bin"), "--cache", "c", "--sha256", &wrong],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("expected sha256 {wrong}"))
            && err.contains(&format!("got {}", sha256(&body))),
        "{err}"
    );
    assert!(err.contains("nothing was kept"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("c")).unwrap().count(),
        0,
        "no file, part or sidecar"
    );
}

#[test]
fn http_errors_name_the_url_and_hf_token() {
    let srv = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = srv.url("/nope/model.bin");
    let o = sweep(dir.path(), &[&missing], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("HTTP 404") && err.contains(&missing), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A refusal from the Hub (here HF_ENDPOINT, a mirror) says what to do with HF_TOKEN, which is
    // sent there and only there.
    let gated = "/org/gated/resolve/main/model.safetensors";
    srv.route(
        gated,
        Route {
            status: Some(401),
            ..Route::default()
        },
    );
    let endpoint = srv.url("");
    let o = sweep(
        dir.path(),
        &[&srv.url(gated)],
        &[("HF_ENDPOINT", &endpoint)],
    );
    let err = text(&o).1;
    assert!(
        err.contains("HTTP 401") && err.contains("set HF_TOKEN"),
        "{err}"
    );
    let o = sweep(
        dir.path(),
        &[&srv.url(gated)],
        &[("HF_ENDPOINT", &endpoint), ("HF_TOKEN", "hf_secret")],
    );
    assert!(text(&o).1.contains("HF_TOKEN was sent"));
    let seen = srv.seen();
    assert_eq!(
        seen.last().unwrap().headers["authorization"],
        "Bearer hf_secret"
    );
    assert!(!seen[1].headers.contains_key("authorization"));

    // Another host never sees the token.
    srv.route("/public.txt", file(b"hello", "\"p\""));
    let o = sweep(
        dir.path(),
        &[&srv.url("/public.txt"), "--cache", "c"],
        &[("HF_TOKEN", "hf_secret")],
    );
    assert!(o.status.success());
    assert!(!srv
        .seen()
        .last()
        .unwrap()
        .headers
        .contains_key("authorization"));
}

#[test]
fn an_unreachable_host_is_named() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let o = sweep(
        dir.path(),
        &[&format!("http://127.0.0.1:{port}/x.bin")],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn hf_resolve_urls_follow_redirects_into_the_cache() {
    let srv = Server::start();
    let body = payload(30_000, 6);
    let resolve = "/org/repo/resolve/main/sub/model.safetensors";
    srv.route(
        resolve,
        Route {
            redirect: Some(srv.url("/cdn/abc123")),
            ..Route::default()
        },
    );
    srv.route("/cdn/abc123", file(&body, "\"cdn\""));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("sc");
    let o = sweep(
        dir.path(),
        &[&srv.url(resolve)],
        &[("SWEEP_CACHE", cache.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        std::fs::read(cache.join("downloads/model.safetensors")).unwrap(),
        body
    );
    let paths: Vec<String> = srv.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec![resolve.to_string(), "/cdn/abc123".to_string()]);
}

#[test]
fn concurrent_fetches_of_one_file_download_it_once() {
    let srv = Server::start();
    let body = payload(200_000, 7);
    srv.route(
        "/shared.bin",
        Route {
            slow: true,
            ..file(&body, "\"s\"")
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/shared.bin");
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_sweep"))
                .args(["fetch", &url, "--cache", "c"])
                .current_dir(dir.path())
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", text(o).1);
    }
    let fetched = outs
        .iter()
        .filter(|o| text(o).0.contains("fetched"))
        .count();
    assert_eq!(fetched, 1, "one downloads, the others wait and find it");
    assert_eq!(srv.seen().len(), 1);
    assert_eq!(
        std::fs::read(dir.path().join("c/shared.bin")).unwrap(),
        body
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("c")).unwrap().count(),
        1,
        "no lock, part or sidecar left"
    );
}

#[test]
fn a_stale_file_or_an_overlong_part_is_downloaded_again() {
    let srv = Server::start();
    let body = payload(5_000, 8);
    srv.route("/s.bin", file(&body, "\"s\""));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/s.bin");
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).unwrap();

    // A file that does not match --sha256 is replaced.
    std::fs::write(c.join("s.bin"), b"stale").unwrap();
    let o = sweep(
        dir.path(),
        &[&url, "--cache", "c", "--sha256", &sha256(&body)],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(std::fs::read(c.join("s.bin")).unwrap(), body);

    // A part as long as the file (a crash before the rename): the server answers 416 to its
    // range, so it starts over.
    std::fs::remove_file(c.join("s.bin")).unwrap();
    std::fs::write(c.join("s.bin.part"), &body).unwrap();
    let side = format!(r#"{{"url":"{url}","etag":"\"s\"","last_modified":null,"total":5000}}"#);
    std::fs::write(c.join("s.bin.part.json"), side).unwrap();
    let o = sweep(dir.path(), &[&url, "--cache", "c"], &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let seen = srv.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].headers["range"], "bytes=5000-");
    assert!(!seen[2].headers.contains_key("range"));
    assert_eq!(std::fs::read(c.join("s.bin")).unwrap(), body);
    assert_eq!(std::fs::read_dir(&c).unwrap().count(), 1);
}

#[test]
fn a_disk_error_names_the_path() {
    // The cache lies under a regular file, so it cannot be created (even by root).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain"), b"x").unwrap();
    let o = sweep(
        dir.path(),
        &["http://127.0.0.1:1/x.bin", "--cache", "plain/cache"],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.starts_with("error: writing plain/cache"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["http://127.0.0.1:1/x", "--sha256", "abc"],
        vec!["ftp://example.org/x"],
        vec!["http://127.0.0.1:1/"],
    ] {
        let o = sweep(dir.path(), &args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
    }
}
