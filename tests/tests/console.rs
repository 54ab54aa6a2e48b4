//! The web console over real loopback HTTP against a real scheduler: sign-in
//! (wrong token, cookie flags, rate limit), CSRF on every POST, sign-out,
//! security headers, who sees which job, client ids and Complete through the
//! forms (checked over gRPC), escaping of user text, and the live stream.

use std::time::Duration;

use aibro_proto::v1 as pb;
use aibro_proto::v1::JobStatus;
use aibro_tests::{deploy_request, example, tls_connect, Scheduler, DEPLOY_DEADLINE};
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const XSS: &str = "<script>alert(1)</script>";
const XSS_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
const LIVE_DEADLINE: Duration = Duration::from_secs(120);

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a form with csrf");
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// Sends one HTTP/1.1 request on a fresh connection; the response's head.
async fn send(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Result<hyper::Response<Incoming>> {
    let cookie = cookie.map(|c| ("cookie", c));
    send_with(addr, method, path, cookie.as_slice(), form).await
}

/// [`send`] with the request's own `headers`.
async fn send_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Result<hyper::Response<Incoming>> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut sender, conn) = http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    if method == "POST" {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    Ok(sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?)
}

async fn fetch(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Result<Page> {
    let response = send(addr, method, path, cookie, form).await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Page {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A signed-in browser: its cookie (`aibro_session=…`) and CSRF token.
struct Browser {
    addr: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn sign_in(s: &Scheduler, token: &str) -> Result<Browser> {
        let page = fetch(
            &s.addr,
            "POST",
            "/console/signin",
            None,
            &[("token", token)],
        )
        .await?;
        assert_eq!(
            (page.status, page.location()),
            (303, "/console"),
            "{}",
            page.body
        );
        let set = page.headers["set-cookie"].to_str()?;
        let cookie = set.split(';').next().unwrap().to_string();
        let mut browser = Browser {
            addr: s.addr.clone(),
            cookie,
            csrf: String::new(),
        };
        browser.csrf = browser.get("/console").await?.csrf();
        Ok(browser)
    }

    async fn get(&self, path: &str) -> Result<Page> {
        fetch(&self.addr, "GET", path, Some(&self.cookie), &[]).await
    }

    /// POSTs `form` with the session's CSRF token.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Page> {
        let mut form = form.to_vec();
        form.push(("csrf", &self.csrf));
        fetch(&self.addr, "POST", path, Some(&self.cookie), &form).await
    }

    /// POSTs `form` as it is (no CSRF token added).
    async fn post_raw(&self, path: &str, form: &[(&str, &str)]) -> Result<Page> {
        fetch(&self.addr, "POST", path, Some(&self.cookie), form).await
    }
}

fn assert_secure_headers(page: &Page) {
    let h = &page.headers;
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["x-content-type-options"], "nosniff");
}

fn json_code(page: &Page) -> String {
    let json: serde_json::Value = serde_json::from_str(&page.body)
        .unwrap_or_else(|_| panic!("not JSON ({}): {}", page.status, page.body));
    json["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn sign_in_cookies_csrf_sign_out_and_the_rate_limit() -> Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;

    let root = fetch(&s.addr, "GET", "/", None, &[]).await?;
    assert_eq!((root.status, root.location()), (303, "/console"));
    let anonymous = fetch(&s.addr, "GET", "/console", None, &[]).await?;
    assert_eq!(
        (anonymous.status, anonymous.location()),
        (303, "/console/signin")
    );
    assert_secure_headers(&anonymous);
    let form = fetch(&s.addr, "GET", "/console/signin", None, &[]).await?;
    assert!(form.body.contains(r#"<form id="signin""#), "{}", form.body);
    assert_secure_headers(&form);
    let anonymous_post = fetch(&s.addr, "POST", "/console/signout", None, &[]).await?;
    assert_eq!(
        (anonymous_post.status, json_code(&anonymous_post).as_str()),
        (401, "unauthenticated")
    );

    // 1st attempt: a wrong token gets an error and no cookie.
    let wrong = fetch(
        &s.addr,
        "POST",
        "/console/signin",
        None,
        &[("token", "secret_nope")],
    )
    .await?;
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers.get("set-cookie").is_none());
    assert!(wrong.body.contains(r#"id="error""#), "{}", wrong.body);

    // 2nd: the right one; the cookie holds a random id, never the token.
    let page = fetch(
        &s.addr,
        "POST",
        "/console/signin",
        None,
        &[("token", &alice)],
    )
    .await?;
    let set = page.headers["set-cookie"].to_str()?.to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let id = cookie
        .strip_prefix("aibro_session=")
        .context("cookie name")?;
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(!set.contains(&alice));
    let jobs = fetch(&s.addr, "GET", "/console", Some(&cookie), &[]).await?;
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    assert_secure_headers(&jobs);
    assert!(jobs.body.contains(r#"<table id="jobs""#));
    let csrf = jobs.csrf();

    // Sign-out needs the session's CSRF token; without it nothing changes.
    for form in [vec![], vec![("csrf", "0".repeat(64))]] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = fetch(&s.addr, "POST", "/console/signout", Some(&cookie), &form).await?;
        assert_eq!(
            (refused.status, json_code(&refused).as_str()),
            (403, "csrf")
        );
        let still = fetch(&s.addr, "GET", "/console", Some(&cookie), &[]).await?;
        assert_eq!(still.status, 200);
    }
    let out = fetch(
        &s.addr,
        "POST",
        "/console/signout",
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await?;
    assert_eq!(out.status, 303);
    assert!(out.headers["set-cookie"].to_str()?.contains("Max-Age=0"));
    let after = fetch(&s.addr, "GET", "/console", Some(&cookie), &[]).await?;
    assert_eq!((after.status, after.location()), (303, "/console/signin"));
    let events = fetch(&s.addr, "GET", "/console/events", Some(&cookie), &[]).await?;
    assert_eq!(events.status, 303, "the live stream needs a session too");

    // Attempts 3 to 5 pass; the 6th within the minute waits.
    for _ in 3..=5 {
        let page = fetch(&s.addr, "POST", "/console/signin", None, &[("token", "x")]).await?;
        assert_eq!(page.status, 401);
    }
    let limited = fetch(
        &s.addr,
        "POST",
        "/console/signin",
        None,
        &[("token", &alice)],
    )
    .await?;
    assert_eq!(
        (limited.status, json_code(&limited).as_str()),
        (429, "rate_limited")
    );
    let retry: u64 = limited.headers["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(limited.headers.get("set-cookie").is_none());
    Ok(())
}

/// Reads the SSE stream until a `job` event shows `job_id` as `status`;
/// everything read.
async fn wait_live(
    events: hyper::Response<Incoming>,
    job_id: &str,
    status: &str,
) -> Result<String> {
    let mut body = events.into_body();
    let mut seen = String::new();
    let want = format!(r#""id":"{job_id}""#);
    let found = tokio::time::timeout(LIVE_DEADLINE, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            let hit = seen.split("\n\n").any(|e| {
                e.contains("event: job")
                    && e.contains(&want)
                    && e.contains(&format!(r#""status":"{status}""#))
            });
            if hit {
                return Ok(seen.clone());
            }
        }
        bail!("the stream ended")
    })
    .await;
    match found {
        Ok(result) => result.with_context(|| format!("events so far:\n{seen}")),
        Err(_) => bail!("no {status} event for {job_id} within {LIVE_DEADLINE:?}:\n{seen}"),
    }
}

async fn clients(s: &Scheduler, token: &str, job_id: &str) -> Result<Vec<String>> {
    let r = s
        .inference(Some(token))
        .await?
        .list_clients(pb::ListClientsRequest {
            job_id: job_id.into(),
            model_name: String::new(),
        })
        .await?;
    Ok(r.into_inner().client_ids)
}

#[tokio::test]
async fn jobs_live_escaping_clients_and_complete_through_the_pages() -> Result<()> {
    let s = Scheduler::start().await?;
    let (alice, bob) = (s.user("alice").await?, s.user("bob").await?);
    let a = Browser::sign_in(&s, &alice).await?;
    let b = Browser::sign_in(&s, &bob).await?;
    let admin = Browser::sign_in(&s, &s.admin_token).await?;

    // The live streams are open before the job exists.
    let events = send(&s.addr, "GET", "/console/events", Some(&a.cookie), &[]).await?;
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let bobs_events = send(&s.addr, "GET", "/console/events", Some(&b.cookie), &[]).await?;
    let digest = s.upload_dir(&alice, &example("echo")).await?;
    let mut request = deploy_request("echo", &digest);
    request.description = XSS.into();
    let job_id = s.deploy_with(&alice, request).await?;
    wait_live(events, &job_id, "DEPLOYED").await?;
    // Bob's stream carries his own job's changes, and none of Alice's
    // (which were all published before his).
    let bobs_digest = s.upload_dir(&bob, &example("echo")).await?;
    let bobs_job = s.deploy(&bob, "echo", &bobs_digest).await?;
    let bob_saw = wait_live(bobs_events, &bobs_job, "DEPLOYED").await?;
    assert!(!bob_saw.contains(&job_id), "{bob_saw}");

    let jobs = a.get("/console").await?;
    assert!(
        jobs.body
            .contains(&format!(r#"<tr data-job-id="{job_id}">"#)),
        "{}",
        jobs.body
    );
    assert!(jobs.body.contains("status-DEPLOYED"));
    let job_page = format!("/console/jobs/{job_id}");
    let page = a.get(&job_page).await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(XSS_ESCAPED), "{}", page.body);
    assert!(!page.body.contains(XSS));
    assert!(page.body.contains(r#"<figure id="timeline">"#));
    assert!(page.body.contains("curl -X POST"));

    // Bob sees none of it, and cannot act on it.
    let bobs = b.get("/console").await?;
    assert!(!bobs.body.contains(&job_id));
    let hidden = b.get(&job_page).await?;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    let add = format!("{job_page}/clients");
    let refused = b.post(&add, &[("client_id", "bobs")]).await?;
    assert_eq!(refused.status, 404, "{}", refused.body);
    let refused = b.post(&format!("{job_page}/complete"), &[]).await?;
    assert_eq!(refused.status, 404, "{}", refused.body);
    // The admin sees every job.
    assert!(admin.get("/console").await?.body.contains(&job_id));
    assert_eq!(admin.get(&job_page).await?.status, 200);

    // Client ids through the forms; without the CSRF token nothing changes.
    let client = "c1<b>x</b>";
    let refused = a.post_raw(&add, &[("client_id", client)]).await?;
    assert_eq!(
        (refused.status, json_code(&refused).as_str()),
        (403, "csrf")
    );
    let refused = a
        .post_raw(&add, &[("client_id", client), ("csrf", "wrong")])
        .await?;
    assert_eq!(refused.status, 403);
    assert!(clients(&s, &alice, &job_id).await?.is_empty());
    let added = a.post(&add, &[("client_id", client)]).await?;
    assert_eq!(
        (added.status, added.location()),
        (303, job_page.as_str()),
        "{}",
        added.body
    );
    assert_eq!(clients(&s, &alice, &job_id).await?, [client]);
    let page = a.get(&job_page).await?;
    assert!(
        page.body.contains("c1&lt;b&gt;x&lt;/b&gt;"),
        "{}",
        page.body
    );
    let twice = a.post(&add, &[("client_id", client)]).await?;
    assert_eq!(twice.status, 400, "{}", twice.body);
    a.post(&add, &[("client_id", "c2")]).await?;
    let removed = a.post(&add, &[("remove", client)]).await?;
    assert_eq!(removed.status, 303, "{}", removed.body);
    assert_eq!(clients(&s, &alice, &job_id).await?, ["c2"]);
    a.post(&add, &[("public", "true")]).await?;
    assert!(clients(&s, &alice, &job_id).await?.is_empty());

    // Complete: a confirmation step, then the POST with its token.
    let confirm = a.get(&format!("{job_page}/complete")).await?;
    assert!(
        confirm.body.contains(r#"<form id="confirm-complete""#),
        "{}",
        confirm.body
    );
    let complete = format!("{job_page}/complete");
    let refused = a.post_raw(&complete, &[]).await?;
    assert_eq!(refused.status, 403);
    assert_eq!(
        s.get_job(&alice, &job_id).await?.status(),
        JobStatus::Deployed
    );
    let done = a.post(&complete, &[]).await?;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        s.get_job(&alice, &job_id).await?.status(),
        JobStatus::Completed
    );
    let page = a.get(&job_page).await?;
    assert!(
        page.body.contains(r#"data-status="COMPLETED""#),
        "{}",
        page.body
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_with_json() -> Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let a = Browser::sign_in(&s, &alice).await?;
    let bad_filter = a.get("/console?status=NOPE").await?;
    assert_eq!(
        (bad_filter.status, json_code(&bad_filter).as_str()),
        (400, "invalid_input")
    );
    let bad_page = a.get("/console?page=not-a-job").await?;
    assert_eq!(
        (bad_page.status, json_code(&bad_page).as_str()),
        (400, "invalid_input")
    );
    let missing = a.get("/console/jobs/nope").await?;
    assert_eq!(missing.status, 404);
    let big = "x".repeat(100 << 10);
    let too_big = a
        .post("/console/jobs/nope/clients", &[("client_id", &big)])
        .await?;
    assert_eq!(too_big.status, 413);
    let empty = a
        .post("/console/jobs/nope/clients", &[("client_id", " ")])
        .await?;
    assert_eq!(empty.status, 400);
    let script = a.get("/console/static/live.js").await?;
    assert_eq!(script.status, 200);
    assert!(script.headers["content-type"]
        .to_str()?
        .starts_with("text/javascript"));
    assert_eq!(a.get("/console/static/../secret").await?.status, 404);
    let market = a.get("/console/marketplace").await?;
    assert!(
        market.body.contains(r#"data-machine="local.small""#),
        "{}",
        market.body
    );
    Ok(())
}

#[tokio::test]
async fn a_training_job_shows_its_progress_and_downloads_its_results() -> Result<()> {
    let s = Scheduler::start().await?;
    let (erin, bob) = (s.user("erin").await?, s.user("bob").await?);
    let digest = s.upload_dir(&erin, &example("train-linear")).await?;
    let request = pb::FitRequest {
        artifact_digest: digest,
        machine_ids: vec!["local.small.od".into()],
        wait_request_s: 1,
        args: [("epochs".to_string(), "3".to_string())].into(),
        ..Default::default()
    };
    let job_id = s
        .training(Some(&erin))
        .await?
        .fit(request)
        .await?
        .into_inner()
        .job_id;
    s.watch_until(&erin, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;

    let e = Browser::sign_in(&s, &erin).await?;
    let page = e.get(&format!("/console/jobs/{job_id}")).await?;
    assert!(
        page.body.contains(r#"<figure id="progress">"#),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Training progress: epoch 3 of 3") && page.body.contains("<polyline"),
        "the progress chart to the last epoch: {}",
        page.body
    );
    assert!(page.body.contains(r#"id="download""#), "{}", page.body);
    let result = format!("/console/jobs/{job_id}/result");
    let downloaded = send(&s.addr, "GET", &result, Some(&e.cookie), &[]).await?;
    assert_eq!(downloaded.status(), 200);
    let bytes = downloaded.into_body().collect().await?.to_bytes();
    let mut stream = s
        .training(Some(&erin))
        .await?
        .download_result(pb::DownloadResultRequest {
            job_id: job_id.clone(),
        })
        .await?
        .into_inner();
    let mut grpc = Vec::new();
    while let Some(chunk) = stream.message().await? {
        grpc.extend(chunk.data);
    }
    assert!(!grpc.is_empty());
    assert_eq!(
        bytes.as_ref(),
        grpc.as_slice(),
        "the same bytes as DownloadResult"
    );

    let b = Browser::sign_in(&s, &bob).await?;
    assert_eq!(b.get(&result).await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn over_tls_the_session_cookie_is_secure() -> Result<()> {
    let (s, certified, _certs) = aibro_tests::self_signed_scheduler(&[]).await?;
    let alice = s.user("alice").await?;
    let tls = tls_connect(&s.addr, &certified, &[b"http/1.1"]).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let body = format!("token={alice}");
    let request = Request::post("/console/signin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"].to_str()?;
    assert!(set.ends_with("; Secure"), "{set}");
    assert!(
        set.contains("HttpOnly; SameSite=Strict; Path=/console"),
        "{set}"
    );
    Ok(())
}

#[tokio::test]
async fn the_marketplace_shows_pool_agents_and_their_state() -> Result<()> {
    let (s, _catalog) = aibro_tests::pool_scheduler(&[]).await?;
    let alice = s.user("alice").await?;
    let hosts = tempfile::tempdir()?;
    let _agent = aibro_tests::host_agent(&s, &hosts.path().join("gpu-1"), "pool.cpu")?;
    aibro_tests::wait_pool(&s, &alice, (1, 1)).await?;
    let a = Browser::sign_in(&s, &alice).await?;
    let market = a.get("/console/marketplace").await?;
    assert!(
        market.body.contains(r#"data-machine="pool.cpu""#)
            && market.body.contains("table id=\"pool-agents\"")
            && market.body.contains(r#"<td class="state">idle</td>"#),
        "{}",
        market.body
    );
    Ok(())
}

/// A form posted by another site's page (login CSRF, or an action with a
/// stolen CSRF token) is refused, and signs nobody in.
#[tokio::test]
async fn forms_from_another_site_are_refused() -> Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let sign_in = |origin: &str, site: Option<&'static str>| {
        let origin = origin.replace("SELF", &s.addr);
        let (addr, token) = (s.addr.clone(), alice.clone());
        async move {
            let mut headers = vec![("host", addr.as_str()), ("origin", origin.as_str())];
            headers.extend(site.map(|site| ("sec-fetch-site", site)));
            send_with(
                &addr,
                "POST",
                "/console/signin",
                &headers,
                &[("token", &token)],
            )
            .await
        }
    };
    for (origin, site) in [
        ("http://evil.example", None),
        ("null", None),
        ("http://SELF", Some("cross-site")),
    ] {
        let refused = sign_in(origin, site).await?;
        assert_eq!(refused.status(), 403, "{origin} {site:?}");
        assert!(refused.headers().get("set-cookie").is_none());
    }
    let same = sign_in("http://SELF", Some("same-origin")).await?;
    assert_eq!(same.status(), 303);
    assert!(same.headers().get("set-cookie").is_some());
    Ok(())
}
