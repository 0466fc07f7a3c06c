//! The Job controller: runs pods until `completions` succeed (NonIndexed or Indexed), at most
//! `parallelism` at once, fails after `backoffLimit` failures or `activeDeadlineSeconds`, sets the
//! Complete/Failed conditions, and deletes finished Jobs after `ttlSecondsAfterFinished`.

use crate::informer::{key_of, Expectations, Queue};
use crate::selector::{self, controller_key, controller_of, is_active, is_deleting, split_key};
use crate::{enqueue, replicaset::pod_from_template, Ctx, Error};
use k3rs_client::{DeleteParams, Resource};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

const MANAGER: &str = "job-controller";
const INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub fn resource() -> Resource {
    Resource::new("batch", "v1", "jobs")
}

#[derive(Clone)]
pub struct JobController {
    ctx: Arc<Ctx>,
    queue: Queue,
    exp: Expectations,
}

fn finished(job: &Value) -> Option<String> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str().map(String::from))
}

fn pod_index(p: &Value) -> Option<i64> {
    p["metadata"]["annotations"][INDEX]
        .as_str()
        .or(p["metadata"]["labels"][INDEX].as_str())?
        .parse()
        .ok()
}

/// "0-2,4" (upstream's completedIndexes format).
fn format_indexes(ix: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let v: Vec<i64> = ix.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

impl JobController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = JobController {
            ctx: ctx.clone(),
            queue: Queue::default(),
            exp: Expectations::default(),
        };
        enqueue::own_objects(&ctx.jobs, &me.queue);
        let m = me.clone();
        ctx.pods.on_change(Box::new(move |old, new| {
            let Some(key) = new.or(old).and_then(|p| controller_key(p, "Job")) else {
                return;
            };
            match (old, new) {
                (None, Some(_)) => m.exp.creation_observed(&key),
                (Some(o), None) => m.exp.deletion_observed(&key, &key_of(o)),
                (Some(o), Some(n)) if is_deleting(n) && !is_deleting(o) => {
                    m.exp.deletion_observed(&key, &key_of(n))
                }
                _ => {}
            }
            m.queue.add(key);
        }));
        me
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(
            &self.queue,
            "Job",
            |key| async move { me.reconcile(&key).await },
        )
        .await
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(job) = self.ctx.jobs.get(key) else {
            self.exp.forget(key);
            return Ok(None);
        };
        if is_deleting(&job) {
            return Ok(None);
        }
        let (ns, name) = split_key(key);
        let uid = job["metadata"]["uid"].as_str().unwrap_or("");
        // Read before the pod cache: satisfied here means every pod this controller made is
        // already in the list below (the handler caches a pod before it counts it as seen).
        let needs_sync = self.exp.satisfied(key);
        let pods: Vec<Value> = self
            .ctx
            .pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect();
        if finished(&job).is_some() {
            return self.ttl(&job, ns, name).await;
        }
        let spec = &job["spec"];
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let completions = spec["completions"].as_i64();
        let indexed = spec["completionMode"].as_str() == Some("Indexed");
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let suspended = spec["suspend"].as_bool().unwrap_or(false);
        let active: Vec<&Value> = pods.iter().filter(|p| is_active(p)).collect();
        let succeeded_pods: Vec<&Value> = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Succeeded")
            .collect();
        let failed = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .count() as i64;
        let ready = active.iter().filter(|p| selector::is_ready(p)).count() as i64;
        let succeeded_ix: BTreeSet<i64> = succeeded_pods
            .iter()
            .filter_map(|p| pod_index(p))
            .filter(|i| completions.is_none_or(|c| *i < c))
            .collect();
        let succeeded = if indexed {
            succeeded_ix.len() as i64
        } else {
            succeeded_pods.len() as i64
        };
        let now = selector::now_rfc3339();
        let start_time = job["status"]["startTime"]
            .as_str()
            .map(String::from)
            .unwrap_or(now.clone());
        let mut recheck = None;
        // Failure: backoff limit or deadline.
        let mut failure: Option<(&str, String)> = None;
        if failed > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let Some(ads) = spec["activeDeadlineSeconds"].as_i64() {
            if let Ok(st) = chrono::DateTime::parse_from_rfc3339(&start_time) {
                let due = st.with_timezone(&chrono::Utc) + chrono::Duration::seconds(ads);
                let n = chrono::Utc::now();
                if due <= n {
                    failure = Some((
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline".into(),
                    ));
                } else {
                    recheck = (due - n).to_std().ok();
                }
            }
        }
        let complete = failure.is_none()
            && match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            };
        let mut active_count = active.len() as i64;
        if failure.is_some() || complete || suspended {
            // Stop whatever still runs.
            for p in &active {
                self.delete_pod(&job, p).await?;
            }
            active_count = 0;
        } else if needs_sync {
            let want = match completions {
                Some(c) if !indexed => (c - succeeded).min(parallelism),
                Some(c) => (c - succeeded).min(parallelism),
                None => {
                    if succeeded > 0 {
                        0
                    } else {
                        parallelism
                    }
                }
            }
            .max(0);
            if active_count < want {
                let mut indexes: Vec<Option<i64>> = Vec::new();
                if indexed {
                    let busy: HashSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
                    for i in 0..completions.unwrap_or(0) {
                        if indexes.len() as i64 >= want - active_count {
                            break;
                        }
                        if !succeeded_ix.contains(&i) && !busy.contains(&i) {
                            indexes.push(Some(i));
                        }
                    }
                } else {
                    indexes = vec![None; (want - active_count) as usize];
                }
                self.exp.expect(key, indexes.len() as i64, HashSet::new());
                for ix in indexes {
                    self.create_pod(&job, name, ix).await?;
                    active_count += 1;
                }
            } else if active_count > want {
                let victims: Vec<&&Value> =
                    active.iter().take((active_count - want) as usize).collect();
                self.exp
                    .expect(key, 0, victims.iter().map(|p| key_of(p)).collect());
                for p in victims {
                    self.delete_pod(&job, p).await?;
                    active_count -= 1;
                }
            }
        }
        // Status.
        let mut status: Map<String, Value> = job["status"].as_object().cloned().unwrap_or_default();
        if !suspended {
            status.insert("startTime".into(), json!(start_time));
        }
        for (k, v) in [
            ("active", active_count),
            ("succeeded", succeeded),
            ("failed", failed),
        ] {
            if v == 0 {
                status.remove(k);
            } else {
                status.insert(k.into(), json!(v));
            }
        }
        status.insert("ready".into(), json!(ready));
        status.insert(
            "terminating".into(),
            json!(pods
                .iter()
                .filter(|p| is_deleting(p) && !selector::is_terminal(p))
                .count()),
        );
        if indexed {
            if succeeded_ix.is_empty() {
                status.remove("completedIndexes");
            } else {
                status.insert(
                    "completedIndexes".into(),
                    json!(format_indexes(&succeeded_ix)),
                );
            }
        }
        let mut conds: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason, "message": msg});
        if let Some((reason, msg)) = &failure {
            conds.push(cond("FailureTarget", reason, msg));
            conds.push(cond("Failed", reason, msg));
            self.ctx.recorder.warning(&job, reason, msg, "Fail").await;
        } else if complete {
            conds.push(cond(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conds.push(cond(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            status.insert("completionTime".into(), json!(now));
            self.ctx
                .recorder
                .normal(&job, "Completed", "Job completed", "Complete")
                .await;
        }
        status.insert("conditions".into(), json!(conds));
        if conds.is_empty() {
            status.remove("conditions");
        }
        let new = Value::Object(status);
        if new != job["status"] {
            let o = self
                .ctx
                .client
                .replace(
                    &resource(),
                    Some(ns),
                    name,
                    {
                        let mut j = job.clone();
                        j["status"] = new;
                        j
                    },
                    Some("status"),
                    MANAGER,
                )
                .await
                .map_err(|e| Error::Api("updating job status", e))?;
            self.ctx.jobs.observe(&o);
            if finished(&o).is_some() {
                return self.ttl(&o, ns, name).await;
            }
        }
        Ok(recheck)
    }

    async fn create_pod(&self, job: &Value, name: &str, index: Option<i64>) -> Result<(), Error> {
        let ns = job["metadata"]["namespace"].as_str().unwrap_or("");
        let mut template = job["spec"]["template"].clone();
        let uid = job["metadata"]["uid"].as_str().unwrap_or("");
        if template["metadata"]["labels"].is_null() {
            template["metadata"]["labels"] = json!({});
        }
        let labels = &mut template["metadata"]["labels"];
        for (k, v) in [
            ("job-name", name),
            ("batch.kubernetes.io/job-name", name),
            ("controller-uid", uid),
            ("batch.kubernetes.io/controller-uid", uid),
        ] {
            if labels[k].is_null() {
                labels[k] = json!(v);
            }
        }
        let gen_name = match index {
            Some(i) => {
                template["metadata"]["labels"][INDEX] = json!(i.to_string());
                if template["metadata"]["annotations"].is_null() {
                    template["metadata"]["annotations"] = json!({});
                }
                template["metadata"]["annotations"][INDEX] = json!(i.to_string());
                template["spec"]["hostname"] = json!(format!("{name}-{i}"));
                for c in template["spec"]["containers"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if c["env"].is_null() {
                        c["env"] = json!([]);
                    }
                    if let Some(env) = c["env"].as_array_mut() {
                        env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{INDEX}']")}}}));
                    }
                }
                format!("{name}-{i}")
            }
            None => name.to_string(),
        };
        let pod = pod_from_template(
            &template,
            &gen_name,
            &selector::owner_ref("batch/v1", "Job", job),
        );
        match self
            .ctx
            .client
            .create(&Resource::core("pods"), Some(ns), pod, MANAGER)
            .await
        {
            Ok(p) => {
                let pn = p["metadata"]["name"].as_str().unwrap_or("");
                self.ctx
                    .recorder
                    .normal(
                        job,
                        "SuccessfulCreate",
                        &format!("Created pod: {pn}"),
                        "Create",
                    )
                    .await;
                Ok(())
            }
            Err(e) => {
                self.exp.creation_observed(&key_of(job));
                Err(Error::Api("creating a pod", e))
            }
        }
    }

    async fn delete_pod(&self, job: &Value, p: &Value) -> Result<(), Error> {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let pn = p["metadata"]["name"].as_str().unwrap_or("");
        match self
            .ctx
            .client
            .delete(
                &Resource::core("pods"),
                Some(ns),
                pn,
                &DeleteParams::default(),
            )
            .await
        {
            Ok(_) => {
                self.ctx
                    .recorder
                    .normal(
                        job,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pn}"),
                        "Delete",
                    )
                    .await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::Api("deleting a pod", e)),
        }
    }

    /// Deletes a finished Job (its pods go by background garbage collection) after ttlSecondsAfterFinished.
    async fn ttl(&self, job: &Value, ns: &str, name: &str) -> Result<Option<Duration>, Error> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return Ok(None);
        };
        let finished_at = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .filter_map(|c| c["lastTransitionTime"].as_str())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .next();
        let Some(at) = finished_at else {
            return Ok(None);
        };
        let due = at.with_timezone(&chrono::Utc) + chrono::Duration::seconds(ttl);
        let n = chrono::Utc::now();
        if due > n {
            return Ok((due - n)
                .to_std()
                .ok()
                .map(|d| d + Duration::from_millis(100)));
        }
        let params = DeleteParams {
            propagation: Some("Background".into()),
            precondition_uid: job["metadata"]["uid"].as_str().map(String::from),
            ..Default::default()
        };
        match self
            .ctx
            .client
            .delete(&resource(), Some(ns), name, &params)
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::Api("deleting a finished job", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn indexes() {
        let s: std::collections::BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(super::format_indexes(&s), "0-2,4,6-7");
    }
}
