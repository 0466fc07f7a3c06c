//! The load phases: bulk create, sequential GET / LIST / UPDATE / CREATE / DELETE, and watch
//! delivery with many watchers.

use super::http::{Client, Conn};
use super::stats::Samples;
use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The namespace all bench objects live in.
pub const NS: &str = "bench";
const PROBE: &str = "watch-probe";
/// Errors kept verbatim per phase.
const KEEP_ERRORS: usize = 5;

fn cm_path(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/api/v1/namespaces/{NS}/configmaps/{n}"),
        None => format!("/api/v1/namespaces/{NS}/configmaps"),
    }
}

/// A ConfigMap with about 100 bytes of data.
fn configmap(name: &str, rv: Option<&str>, tag: &str) -> Vec<u8> {
    let mut meta = json!({"name": name, "namespace": NS});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    let payload = format!("{tag:-<100}");
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"payload": payload},
    }))
    .unwrap_or_default()
}

fn resource_version(obj: &Value) -> Result<String> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .map(String::from)
        .context("object has no metadata.resourceVersion")
}

/// Name of the i-th bulk object.
pub fn object_name(i: usize) -> String {
    format!("cm-{i:06}")
}

/// A spread-out but deterministic sequence of object indexes.
fn pick(i: usize, n: usize) -> usize {
    (i.wrapping_mul(7919) + 13) % n.max(1)
}

/// Latencies and errors of one phase.
#[derive(Default)]
pub struct Phase {
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

impl Phase {
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_errors.len() < KEEP_ERRORS {
            self.first_errors.push(format!("{e:#}"));
        }
    }

    /// Records one outcome; gives up when errors are no longer the exception.
    fn record(&mut self, what: &str, t: Duration, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => self.latencies.push(t),
            Err(e) => self.error(e),
        }
        if self.errors > 20 && self.errors as usize > self.latencies.len() / 10 {
            bail!(
                "{what}: {} errors, giving up; first: {:?}",
                self.errors,
                self.first_errors
            );
        }
        Ok(())
    }

    pub fn samples(&self) -> Samples {
        Samples::new(self.latencies.clone())
    }

    /// ` (N errors: first ...)` or empty.
    pub fn error_note(&self) -> String {
        if self.errors == 0 {
            String::new()
        } else {
            format!(
                "  [{} errors; first: {}]",
                self.errors,
                self.first_errors.first().map(String::as_str).unwrap_or("")
            )
        }
    }
}

pub async fn create_namespace(conn: &Conn) -> Result<()> {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}
    }))?;
    conn.request(Method::POST, "/api/v1/namespaces", Some(body))
        .await?
        .ok_json()
        .with_context(|| format!("creating namespace {NS}"))?;
    Ok(())
}

pub struct Created {
    /// Name → resourceVersion of every object created.
    pub objects: HashMap<String, String>,
    pub elapsed: Duration,
    pub phase: Phase,
}

/// Creates `n` ConfigMaps with `concurrency` requests in flight over `connections` HTTP/2
/// connections.
pub async fn create_bulk(
    client: &Client,
    n: usize,
    concurrency: usize,
    connections: usize,
) -> Result<Created> {
    let mut conns = Vec::new();
    for _ in 0..connections.max(1) {
        conns.push(client.connect().await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency.max(1) {
        let conn = conns[w % conns.len()].clone();
        let (next, errors, give_up) = (next.clone(), errors.clone(), give_up.clone());
        tasks.spawn(async move {
            let mut phase = Phase::default();
            let mut objects = Vec::new();
            while !give_up.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let name = object_name(i);
                let t = Instant::now();
                let r = conn
                    .request(
                        Method::POST,
                        &cm_path(None),
                        Some(configmap(&name, None, &name)),
                    )
                    .await
                    .and_then(|r| r.ok_json())
                    .and_then(|obj| resource_version(&obj));
                match r {
                    Ok(rv) => {
                        phase.latencies.push(t.elapsed());
                        objects.push((name, rv));
                    }
                    Err(e) => {
                        phase.error(e.context(format!("creating {name}")));
                        let total = errors.fetch_add(1, Ordering::Relaxed) + 1;
                        if total > 100 && total as usize > n / 10 {
                            give_up.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            (phase, objects)
        });
    }
    let mut out = Created {
        objects: HashMap::with_capacity(n),
        elapsed: Duration::ZERO,
        phase: Phase::default(),
    };
    while let Some(r) = tasks.join_next().await {
        let (phase, objects) = r.context("create worker panicked")?;
        out.phase.latencies.extend(phase.latencies);
        out.phase.errors += phase.errors;
        for e in phase.first_errors {
            if out.phase.first_errors.len() < KEEP_ERRORS {
                out.phase.first_errors.push(e);
            }
        }
        out.objects.extend(objects);
    }
    out.elapsed = started.elapsed();
    if give_up.load(Ordering::Relaxed) {
        bail!(
            "bulk create: {} errors, giving up; first: {:?}",
            out.phase.errors,
            out.phase.first_errors
        );
    }
    Ok(out)
}

/// Sequential GETs of single objects.
pub async fn get_sequential(conn: &Conn, names: &[String], samples: usize) -> Result<Phase> {
    let mut phase = Phase::default();
    for i in 0..samples {
        let name = &names[pick(i, names.len())];
        let t = Instant::now();
        let r = conn.get(&cm_path(Some(name))).await.and_then(|r| {
            let obj = r.ok_json()?;
            if obj["metadata"]["name"] != json!(name) {
                bail!("GET {name} returned another object");
            }
            Ok(())
        });
        phase.record("GET", t.elapsed(), r)?;
    }
    Ok(phase)
}

pub struct Listed {
    pub pages: Phase,
    pub full: Phase,
    pub items_per_list: Vec<usize>,
    /// Page latencies by page number (0 = the first page, without a continue token).
    pub by_page: Vec<Vec<Duration>>,
}

/// Full paginated lists of the namespace until at least `min_pages` pages and `min_lists`
/// full lists were timed. Every list must return the same number of items, at least
/// `at_least` (the namespace may hold objects the bench did not create, like
/// `kube-root-ca.crt`).
pub async fn list_sequential(
    conn: &Conn,
    page_size: usize,
    at_least: usize,
    min_pages: usize,
    min_lists: usize,
) -> Result<Listed> {
    let mut expected: Option<usize> = None;
    let mut out = Listed {
        pages: Phase::default(),
        full: Phase::default(),
        items_per_list: Vec::new(),
        by_page: Vec::new(),
    };
    let max_pages_per_list = at_least / page_size.max(1) + 10;
    let mut lists = 0;
    while out.pages.latencies.len() < min_pages || lists < min_lists {
        lists += 1;
        if lists > min_lists + min_pages + 10 {
            bail!("LIST: too many attempts");
        }
        let full_started = Instant::now();
        let mut cont: Option<String> = None;
        let mut items = 0;
        let mut failed = None;
        for page in 0..max_pages_per_list {
            let mut path = format!("{}?limit={page_size}", cm_path(None));
            if let Some(c) = &cont {
                path.push_str("&continue=");
                path.push_str(&percent_encode(c));
            }
            let t = Instant::now();
            let r = conn.get(&path).await.and_then(|r| r.ok_json());
            let page_time = t.elapsed();
            match r {
                Ok(list) => {
                    out.pages.record("LIST page", page_time, Ok(()))?;
                    if out.by_page.len() <= page {
                        out.by_page.resize_with(page + 1, Vec::new);
                    }
                    out.by_page[page].push(page_time);
                    items += list["items"].as_array().map_or(0, Vec::len);
                    cont = list["metadata"]["continue"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .map(String::from);
                    if cont.is_none() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let full_time = full_started.elapsed();
        let r = match (failed, cont) {
            (Some(e), _) => Err(e),
            (None, Some(_)) => Err(anyhow::anyhow!(
                "LIST did not end after {max_pages_per_list} pages"
            )),
            (None, None) => {
                out.items_per_list.push(items);
                let want = *expected.get_or_insert(items);
                if items < at_least || items != want {
                    Err(anyhow::anyhow!(
                        "LIST returned {items} items, expected {} (at least {at_least})",
                        want.max(at_least)
                    ))
                } else {
                    Ok(())
                }
            }
        };
        out.full.record("LIST", full_time, r)?;
    }
    Ok(out)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn put(conn: &Conn, name: &str, rv: &str, tag: &str) -> Result<String> {
    let obj = conn
        .request(
            Method::PUT,
            &cm_path(Some(name)),
            Some(configmap(name, Some(rv), tag)),
        )
        .await?
        .ok_json()?;
    resource_version(&obj)
}

/// Sequential PUTs with the current resourceVersion and changed data.
pub async fn update_sequential(
    conn: &Conn,
    objects: &mut HashMap<String, String>,
    names: &[String],
    samples: usize,
) -> Result<Phase> {
    let mut phase = Phase::default();
    for i in 0..samples {
        let name = &names[pick(i, names.len())];
        let rv = objects.get(name).cloned().unwrap_or_default();
        let t = Instant::now();
        let r = put(conn, name, &rv, &format!("update-{i}")).await;
        let elapsed = t.elapsed();
        let r = r.map(|new_rv| {
            objects.insert(name.clone(), new_rv);
        });
        phase.record("UPDATE", elapsed, r)?;
    }
    Ok(phase)
}

/// Sequential creates of `samples` new objects, then sequential deletes of them.
pub async fn create_delete_sequential(conn: &Conn, samples: usize) -> Result<(Phase, Phase)> {
    let mut create = Phase::default();
    let mut names = Vec::new();
    for i in 0..samples {
        let name = format!("seq-{i:06}");
        let t = Instant::now();
        let r = conn
            .request(
                Method::POST,
                &cm_path(None),
                Some(configmap(&name, None, &name)),
            )
            .await
            .and_then(|r| r.ok_json().map(drop));
        let ok = r.is_ok();
        create.record("CREATE", t.elapsed(), r)?;
        if ok {
            names.push(name);
        }
    }
    let mut delete = Phase::default();
    for name in &names {
        let t = Instant::now();
        let r = conn
            .request(Method::DELETE, &cm_path(Some(name)), None)
            .await
            .and_then(|r| r.ok_json().map(drop));
        delete.record("DELETE", t.elapsed(), r)?;
    }
    Ok((create, delete))
}

/// The current resourceVersion of the namespace's ConfigMaps (a one-item list).
pub async fn current_list_rv(conn: &Conn) -> Result<String> {
    let list = conn
        .get(&format!("{}?limit=1", cm_path(None)))
        .await?
        .ok_json()?;
    resource_version(&list)
}

pub struct WatchResult {
    pub watchers: usize,
    pub updates_sent: usize,
    pub updates: Phase,
    pub setup: Duration,
    /// Receive time − send time of every delivered event.
    pub delivery: Samples,
    pub expected: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub watchers_complete: usize,
    pub watch_errors: Vec<String>,
}

#[derive(Default)]
struct WatcherLog {
    /// (seq, latency)
    got: Vec<(u64, Duration)>,
    duplicates: u64,
    out_of_order: u64,
    error: Option<String>,
}

/// Opens `watchers` watches (one HTTP/2 connection each, like independent clients), then
/// updates one object `updates` times, `interval` apart, with its send time in the data.
pub async fn watch_delivery(
    client: &Client,
    conn: &Conn,
    watchers: usize,
    updates: usize,
    interval: Duration,
) -> Result<WatchResult> {
    // The probe object exists before the watches start, so they see only its updates.
    let created = conn
        .request(
            Method::POST,
            &cm_path(None),
            Some(configmap(PROBE, None, "probe")),
        )
        .await?
        .ok_json()
        .context("creating the watch probe")?;
    let mut probe_rv = resource_version(&created)?;
    let rv = current_list_rv(conn).await?;
    let path = format!("{}?watch=true&resourceVersion={rv}", cm_path(None));

    let setup_started = Instant::now();
    let mut opening = JoinSet::new();
    for _ in 0..watchers {
        let client = client.clone();
        let path = path.clone();
        opening.spawn(async move {
            let conn = client.connect().await?;
            let resp = conn.stream(&path).await?;
            Ok::<_, anyhow::Error>((conn, resp))
        });
    }
    let mut streams = Vec::new();
    while let Some(r) = opening.join_next().await {
        streams.push(
            r.context("watch opener panicked")?
                .context("opening a watch")?,
        );
    }
    let setup = setup_started.elapsed();

    let base = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    for (conn, resp) in streams {
        let received = received.clone();
        let mut stop = stop_rx.clone();
        readers.spawn(async move {
            let _conn = conn;
            let mut body = resp.into_body();
            let mut log = WatcherLog::default();
            let mut seen = vec![false; updates];
            let mut last: Option<u64> = None;
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => break,
                    f = body.frame() => f,
                };
                let now = base.elapsed();
                let data = match frame {
                    None => {
                        log.error = Some("watch stream ended early".into());
                        break;
                    }
                    Some(Err(e)) => {
                        log.error = Some(format!("watch stream failed: {e}"));
                        break;
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                        log.error = Some("undecodable watch event".into());
                        continue;
                    };
                    if ev["type"] == "ERROR" {
                        log.error = Some(format!("ERROR event: {}", ev["object"]["message"]));
                        continue;
                    }
                    if ev["type"] != "MODIFIED" || ev["object"]["metadata"]["name"] != PROBE {
                        continue;
                    }
                    let data = &ev["object"]["data"];
                    let seq = data["seq"].as_str().and_then(|s| s.parse::<u64>().ok());
                    let sent = data["sent"].as_str().and_then(|s| s.parse::<u64>().ok());
                    let (Some(seq), Some(sent)) = (seq, sent) else {
                        continue;
                    };
                    let Some(slot) = seen.get_mut(seq as usize) else {
                        continue;
                    };
                    if *slot {
                        log.duplicates += 1;
                        continue;
                    }
                    *slot = true;
                    if last.is_some_and(|l| seq < l) {
                        log.out_of_order += 1;
                    }
                    last = Some(seq);
                    log.got
                        .push((seq, now.saturating_sub(Duration::from_nanos(sent))));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                if log.got.len() == updates {
                    break;
                }
            }
            log
        });
    }

    // The updates, each carrying its send time.
    let mut update_phase = Phase::default();
    let mut sent_ok = 0u64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..updates {
        ticker.tick().await;
        let sent = base.elapsed().as_nanos() as u64;
        let body = serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": PROBE, "namespace": NS, "resourceVersion": probe_rv},
            "data": {"seq": seq.to_string(), "sent": sent.to_string()},
        }))?;
        let t = Instant::now();
        let r = conn
            .request(Method::PUT, &cm_path(Some(PROBE)), Some(body))
            .await
            .and_then(|r| r.ok_json())
            .and_then(|obj| resource_version(&obj));
        let r = r.map(|rv| {
            probe_rv = rv;
            sent_ok += 1;
        });
        update_phase.record("watch probe UPDATE", t.elapsed(), r)?;
    }

    // Wait for every delivery (bounded), then stop the readers.
    let expected = sent_ok * watchers as u64;
    let wait_until = Instant::now() + Duration::from_secs(15);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut all = Vec::new();
    let mut out = WatchResult {
        watchers,
        updates_sent: updates,
        updates: Phase::default(),
        setup,
        delivery: Samples::default(),
        expected,
        missing: 0,
        duplicates: 0,
        out_of_order: 0,
        watchers_complete: 0,
        watch_errors: Vec::new(),
    };
    let mut errors = Vec::new();
    let reader_deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(reader_deadline);
    loop {
        tokio::select! {
            r = readers.join_next() => {
                let Some(r) = r else { break };
                let log = r.context("watch reader panicked")?;
                if log.got.len() as u64 >= sent_ok {
                    out.watchers_complete += 1;
                }
                out.duplicates += log.duplicates;
                out.out_of_order += log.out_of_order;
                if let Some(e) = log.error {
                    errors.push(e);
                }
                all.extend(log.got.into_iter().map(|(_, d)| d));
            }
            _ = &mut reader_deadline => {
                readers.abort_all();
                bail!("watch readers did not stop");
            }
        }
    }
    out.missing = expected.saturating_sub(all.len() as u64);
    out.delivery = Samples::new(all);
    out.updates = update_phase;
    errors.sort();
    errors.dedup();
    out.watch_errors = errors;
    Ok(out)
}
