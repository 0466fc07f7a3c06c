//! Two candidates for one Lease on one in-memory API server: exactly one leads, and when it stops
//! renewing the other takes over only after the lease expired; a leader that sees another holder
//! stops its work.

use k3rs_client::leaderelection::{ElectionConfig, LeaderElector};
use k3rs_client::{Client, Patch, Resource};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
        ..ElectionConfig::new("kube-controller-manager", identity)
    }
}

/// Counts leaders at once (and the most ever seen), and who leads.
#[derive(Default)]
struct Leaders {
    now: AtomicUsize,
    max: AtomicUsize,
    who: Mutex<Vec<String>>,
}

struct Term(Arc<Leaders>);
impl Drop for Term {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn candidate(
    client: Arc<dyn Client>,
    identity: &'static str,
    leaders: Arc<Leaders>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(LeaderElector::new(client, config(identity)).run(move || {
        let leaders = leaders.clone();
        async move {
            let n = leaders.now.fetch_add(1, Ordering::SeqCst) + 1;
            leaders.max.fetch_max(n, Ordering::SeqCst);
            leaders.who.lock().unwrap().push(identity.to_string());
            let _term = Term(leaders.clone());
            std::future::pending::<()>().await;
        }
    }))
}

async fn holder(client: &Arc<dyn Client>) -> String {
    let lease = client
        .get(
            &Resource::new("coordination.k8s.io", "v1", "leases"),
            Some("kube-system"),
            "kube-controller-manager",
        )
        .await
        .expect("lease");
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_takeover_after_expiry() {
    let client = k3rs_apiserver::local_client::LocalClient::in_memory()
        .await
        .expect("api");
    let leaders = Arc::new(Leaders::default());
    let a = candidate(client.clone(), "a", leaders.clone());
    let b = candidate(client.clone(), "b", leaders.clone());
    let l = leaders.clone();
    wait_for("a leader", Duration::from_secs(5), || {
        l.now.load(Ordering::SeqCst) == 1
    })
    .await;
    // Several renew periods: still exactly one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(leaders.now.load(Ordering::SeqCst), 1);
    let first = leaders.who.lock().unwrap()[0].clone();
    assert_eq!(holder(&client).await, first);
    let (leader, other) = if first == "a" { (a, b) } else { (b, a) };
    // The leader dies without releasing: the other waits out the lease, then leads.
    leader.abort();
    let _ = leader.await;
    let stopped = Instant::now();
    let l = leaders.clone();
    wait_for("takeover", Duration::from_secs(5), || {
        l.who.lock().unwrap().len() == 2
    })
    .await;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "took over after {waited:?}, before the 2 s lease could expire"
    );
    let second = leaders.who.lock().unwrap()[1].clone();
    assert_ne!(second, first);
    assert_eq!(holder(&client).await, second);
    assert_eq!(leaders.max.load(Ordering::SeqCst), 1, "two leaders at once");
    other.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stops_when_another_holds_the_lease() {
    let client = k3rs_apiserver::local_client::LocalClient::in_memory()
        .await
        .expect("api");
    let leaders = Arc::new(Leaders::default());
    let a = candidate(client.clone(), "a", leaders.clone());
    let l = leaders.clone();
    wait_for("a leads", Duration::from_secs(5), || {
        l.now.load(Ordering::SeqCst) == 1
    })
    .await;
    // Someone else writes itself in as holder (a server that judged the lease expired).
    client
        .patch(
            &Resource::new("coordination.k8s.io", "v1", "leases"),
            Some("kube-system"),
            "kube-controller-manager",
            Patch::Merge(json!({"spec": {"holderIdentity": "intruder"}})),
            None,
            "test",
        )
        .await
        .expect("patch lease");
    let l = leaders.clone();
    wait_for("a stops", Duration::from_secs(2), || {
        l.now.load(Ordering::SeqCst) == 0
    })
    .await;
    a.abort();
}
