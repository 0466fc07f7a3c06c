//! The CronJob controller (batch/v1): standard five-field schedules and `@hourly`-style
//! nicknames (parsed by `croner`, day-of-month/day-of-week OR-ed as in Vixie cron and upstream's
//! robfig/cron), `timeZone` (IANA names through `chrono-tz`; absent = the server's local zone, as
//! upstream), concurrencyPolicy Allow/Forbid/Replace, suspend, startingDeadlineSeconds with
//! upstream's "too many missed start times" warning past 100, history limits, and the status
//! (`active`, `lastScheduleTime`, `lastSuccessfulTime`). Jobs are named
//! `<cronjob>-<scheduled time in minutes since the epoch>`.

use crate::informer::Queue;
use crate::selector::{self, controller_of, is_deleting, split_key};
use crate::{enqueue, job, Ctx, Error};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use k3rs_client::{DeleteParams, Resource};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

const MANAGER: &str = "cronjob-controller";
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream warns past this many missed start times (and still starts the most recent).
const MAX_MISSED: usize = 100;

pub fn resource() -> Resource {
    Resource::new("batch", "v1", "cronjobs")
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A schedule as upstream accepts it: five fields (no seconds, no years) or a nickname
/// (robfig/cron's `@midnight` is croner's `@daily`).
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    let schedule = if schedule.trim().eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        schedule
    };
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(schedule)
        .map_err(|e| e.to_string())
}

/// The start times in `(earliest, now]`: the most recent one, how many there were (counting
/// stops past [`MAX_MISSED`]), and the first one after `now`.
pub fn schedule_times<Z: TimeZone>(
    cron: &Cron,
    tz: &Z,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, usize, Option<DateTime<Utc>>) {
    let next_after = |t: DateTime<Utc>| {
        cron.find_next_occurrence(&t.with_timezone(tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let next = next_after(now);
    let Some(first) = next_after(earliest).filter(|t| *t <= now) else {
        return (None, 0, next);
    };
    let mut count = 1;
    let mut t = first;
    while count <= MAX_MISSED {
        match next_after(t) {
            Some(n) if n <= now => {
                count += 1;
                t = n;
            }
            _ => return (Some(t), count, next),
        }
    }
    let recent = cron
        .find_previous_occurrence(&now.with_timezone(tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|r| *r >= t)
        .unwrap_or(t);
    (Some(recent), count, next)
}

/// `<cronjob>-<minutes since the epoch>` (upstream's getJobName).
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp() / 60)
}

/// "Complete" or "Failed" once a Job finished.
fn finished(job: &Value) -> Option<&str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

/// The time zone a CronJob's schedule is read in.
enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

#[derive(Clone)]
pub struct CronJobController {
    ctx: Arc<Ctx>,
    queue: Queue,
}

impl CronJobController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = CronJobController {
            ctx: ctx.clone(),
            queue: Queue::default(),
        };
        enqueue::own_objects(&ctx.cronjobs, &me.queue);
        enqueue::controllers_of(&ctx.jobs, "CronJob", &me.queue);
        me
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(&self.queue, "CronJob", |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(cj) = self.ctx.cronjobs.get(key) else {
            return Ok(None);
        };
        if is_deleting(&cj) {
            return Ok(None);
        }
        let (ns, name) = split_key(key);
        let uid = cj["metadata"]["uid"].as_str().unwrap_or("");
        let jobs: Vec<Value> = self
            .ctx
            .jobs
            .list(Some(ns))
            .into_iter()
            .filter(|j| controller_of(j).is_some_and(|(_, _, u)| u == uid))
            .collect();
        let mut status: Map<String, Value> = cj["status"].as_object().cloned().unwrap_or_default();
        let mut active: Vec<Value> = status
            .get("active")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut last_success = status.get("lastSuccessfulTime").and_then(parse_time);

        // What the children did.
        for j in &jobs {
            let juid = &j["metadata"]["uid"];
            let in_active = active.iter().any(|r| r["uid"] == *juid);
            let Some(cond) = finished(j) else { continue };
            if in_active {
                active.retain(|r| r["uid"] != *juid);
                self.ctx
                    .recorder
                    .normal(
                        &cj,
                        "SawCompletedJob",
                        &format!("Saw completed job: {}, condition: {cond}", name_of(j)),
                        "Update",
                    )
                    .await;
            }
            if cond == "Complete" {
                if let Some(t) = parse_time(&j["status"]["completionTime"]) {
                    if last_success.is_none_or(|l| t > l) {
                        last_success = Some(t);
                    }
                }
            }
        }
        // References to Jobs that are gone.
        active.retain(|r| jobs.iter().any(|j| j["metadata"]["uid"] == r["uid"]));
        if let Some(t) = last_success {
            status.insert("lastSuccessfulTime".into(), json!(rfc3339(t)));
        }
        self.cleanup_history(&cj, &jobs).await?;

        let requeue = if cj["spec"]["suspend"].as_bool() == Some(true) {
            None
        } else {
            self.schedule(&cj, ns, name, &jobs, &mut active, &mut status)
                .await?
        };

        if active.is_empty() {
            status.remove("active");
        } else {
            status.insert("active".into(), json!(active));
        }
        let client = self.ctx.client.as_ref();
        let new = Value::Object(status);
        crate::status::write_if_changed(client, &self.ctx.cronjobs, &resource(), MANAGER, &cj, new)
            .await?;
        Ok(requeue)
    }

    /// Starts the Job for the most recent due start time, if any; returns when the next is due.
    async fn schedule(
        &self,
        cj: &Value,
        ns: &str,
        name: &str,
        jobs: &[Value],
        active: &mut Vec<Value>,
        status: &mut Map<String, Value>,
    ) -> Result<Option<Duration>, Error> {
        let schedule = cj["spec"]["schedule"].as_str().unwrap_or("");
        let cron = match parse_schedule(schedule) {
            Ok(c) => c,
            Err(e) => {
                self.ctx
                    .recorder
                    .warning(
                        cj,
                        "UnparseableSchedule",
                        &format!("unparseable schedule: {schedule:?} : {e}"),
                        "Schedule",
                    )
                    .await;
                return Ok(None);
            }
        };
        let zone = match cj["spec"]["timeZone"].as_str() {
            None => Zone::Local,
            Some(tz) => match tz.parse::<chrono_tz::Tz>() {
                Ok(z) => Zone::Named(z),
                Err(_) => {
                    self.ctx
                        .recorder
                        .warning(
                            cj,
                            "UnknownTimeZone",
                            &format!("invalid timeZone: {tz:?}"),
                            "Schedule",
                        )
                        .await;
                    return Ok(None);
                }
            },
        };
        let now = Utc::now();
        let deadline = cj["spec"]["startingDeadlineSeconds"].as_i64();
        let mut earliest = parse_time(&status.get("lastScheduleTime").cloned().unwrap_or_default())
            .or_else(|| parse_time(&cj["metadata"]["creationTimestamp"]))
            .unwrap_or(now);
        if let Some(d) = deadline {
            earliest = earliest.max(now - chrono::Duration::seconds(d));
        }
        let (recent, missed, next) = match &zone {
            Zone::Local => schedule_times(&cron, &chrono::Local, earliest, now),
            Zone::Named(z) => schedule_times(&cron, z, earliest, now),
        };
        let requeue = next.and_then(|n| {
            (n - now)
                .to_std()
                .ok()
                .map(|d| d + Duration::from_millis(100))
        });
        let Some(scheduled) = recent else {
            return Ok(requeue);
        };
        if missed > MAX_MISSED {
            self.ctx
                .recorder
                .warning(
                    cj,
                    "TooManyMissedTimes",
                    &format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
                    "Schedule",
                )
                .await;
        }
        if deadline.is_some_and(|d| scheduled + chrono::Duration::seconds(d) < now) {
            self.ctx
                .recorder
                .warning(
                    cj,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        scheduled.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ),
                    "Schedule",
                )
                .await;
            return Ok(requeue);
        }
        let job_name = job_name(name, scheduled);
        if jobs.iter().any(|j| name_of(j) == job_name)
            || active.iter().any(|r| r["name"] == job_name)
        {
            return Ok(requeue);
        }
        match cj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow") {
            "Forbid" if !active.is_empty() => {
                self.ctx
                    .recorder
                    .normal(
                        cj,
                        "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid",
                        "Schedule",
                    )
                    .await;
                return Ok(requeue);
            }
            "Replace" => {
                for r in std::mem::take(active) {
                    let jn = r["name"].as_str().unwrap_or("");
                    let params = DeleteParams {
                        propagation: Some("Background".into()),
                        ..Default::default()
                    };
                    match self
                        .ctx
                        .client
                        .delete(&job::resource(), Some(ns), jn, &params)
                        .await
                    {
                        Ok(_) => {
                            self.ctx
                                .recorder
                                .normal(
                                    cj,
                                    "SuccessfulDelete",
                                    &format!("Deleted job {jn}"),
                                    "Delete",
                                )
                                .await;
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::Api("replacing an active job", e)),
                    }
                }
            }
            _ => {}
        }
        let job = new_job(cj, &job_name, scheduled, &zone);
        match self
            .ctx
            .client
            .create(&job::resource(), Some(ns), job, MANAGER)
            .await
        {
            Ok(o) => {
                self.ctx.jobs.observe(&o);
                self.ctx
                    .recorder
                    .normal(
                        cj,
                        "SuccessfulCreate",
                        &format!("Created job {job_name}"),
                        "Create",
                    )
                    .await;
                active.push(
                    json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": ns,
                    "name": job_name, "uid": o["metadata"]["uid"],
                    "resourceVersion": o["metadata"]["resourceVersion"]}),
                );
                status.insert("lastScheduleTime".into(), json!(rfc3339(scheduled)));
            }
            Err(e) if e.is_already_exists() => {
                status.insert("lastScheduleTime".into(), json!(rfc3339(scheduled)));
            }
            Err(e) => {
                self.ctx
                    .recorder
                    .warning(
                        cj,
                        "FailedCreate",
                        &format!("Error creating job: {}", e.message),
                        "Create",
                    )
                    .await;
                return Err(Error::Api("creating a job", e));
            }
        }
        Ok(requeue)
    }

    /// Keeps the newest `successfulJobsHistoryLimit` (3) finished and `failedJobsHistoryLimit`
    /// (1) failed Jobs.
    async fn cleanup_history(&self, cj: &Value, jobs: &[Value]) -> Result<(), Error> {
        for (cond, field, default) in [
            ("Complete", "successfulJobsHistoryLimit", 3),
            ("Failed", "failedJobsHistoryLimit", 1),
        ] {
            let limit = cj["spec"][field].as_i64().unwrap_or(default).max(0) as usize;
            let mut done: Vec<&Value> = jobs
                .iter()
                .filter(|j| finished(j) == Some(cond) && !is_deleting(j))
                .collect();
            if done.len() <= limit {
                continue;
            }
            done.sort_by_key(|j| {
                (
                    parse_time(&j["status"]["startTime"]),
                    j["metadata"]["creationTimestamp"]
                        .as_str()
                        .map(String::from),
                )
            });
            let n = done.len() - limit;
            for j in done.into_iter().take(n) {
                let ns = j["metadata"]["namespace"].as_str();
                let params = DeleteParams {
                    propagation: Some("Background".into()),
                    precondition_uid: j["metadata"]["uid"].as_str().map(String::from),
                    ..Default::default()
                };
                match self
                    .ctx
                    .client
                    .delete(&job::resource(), ns, name_of(j), &params)
                    .await
                {
                    Ok(_) => {
                        self.ctx
                            .recorder
                            .normal(
                                cj,
                                "SuccessfulDelete",
                                &format!("Deleted job {}", name_of(j)),
                                "Delete",
                            )
                            .await
                    }
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(Error::Api("deleting an old job", e)),
                }
            }
        }
        Ok(())
    }
}

/// The Job for one start time, from `spec.jobTemplate`.
fn new_job(cj: &Value, name: &str, scheduled: DateTime<Utc>, zone: &Zone) -> Value {
    let tmpl = &cj["spec"]["jobTemplate"];
    let mut annotations = tmpl["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations[SCHEDULED_TIMESTAMP] = json!(match zone {
        Zone::Local => scheduled
            .with_timezone(&chrono::Local)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        Zone::Named(z) => scheduled
            .with_timezone(z)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    let mut meta = json!({"name": name, "annotations": annotations,
        "ownerReferences": [selector::owner_ref("batch/v1", "CronJob", cj)]});
    if let Some(l) = tmpl["metadata"]["labels"].as_object() {
        meta["labels"] = json!(l);
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": tmpl["spec"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_parse_like_upstream() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 3 * * 1-5",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            "0 0 1 JAN MON",
            "0/10 * * * *",
        ] {
            assert!(parse_schedule(ok).is_ok(), "{ok}");
        }
        for bad in ["", "* * * *", "0 * * * * *", "61 * * * *", "nonsense"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_recent_and_missed_start_times() {
        let every_minute = parse_schedule("* * * * *").unwrap();
        let (recent, n, next) = schedule_times(
            &every_minute,
            &Utc,
            at("2024-05-01T10:00:30Z"),
            at("2024-05-01T10:03:10Z"),
        );
        assert_eq!(recent, Some(at("2024-05-01T10:03:00Z")));
        assert_eq!(n, 3);
        assert_eq!(next, Some(at("2024-05-01T10:04:00Z")));
        // Not due yet.
        let (recent, n, _) = schedule_times(
            &every_minute,
            &Utc,
            at("2024-05-01T10:00:00Z"),
            at("2024-05-01T10:00:59Z"),
        );
        assert_eq!((recent, n), (None, 0));
        // A day of missed minutes: counting stops past 100, the most recent still found.
        let (recent, n, _) = schedule_times(
            &every_minute,
            &Utc,
            at("2024-05-01T00:00:00Z"),
            at("2024-05-02T00:00:00Z"),
        );
        assert_eq!(recent, Some(at("2024-05-02T00:00:00Z")));
        assert!(n > MAX_MISSED);
        assert_eq!(
            job_name("hello", at("2024-05-02T00:00:00Z")),
            "hello-28576800"
        );
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let nine = parse_schedule("0 9 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        // 09:00 in Berlin (CEST, UTC+2) is 07:00 UTC.
        let (recent, _, next) = schedule_times(
            &nine,
            &tz,
            at("2024-06-01T00:00:00Z"),
            at("2024-06-01T08:00:00Z"),
        );
        assert_eq!(recent, Some(at("2024-06-01T07:00:00Z")));
        assert_eq!(next, Some(at("2024-06-02T07:00:00Z")));
        let cj = json!({"metadata": {"name": "c", "uid": "u"}, "spec": {"jobTemplate": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"template": {"spec": {}}}}}});
        let j = new_job(&cj, "c-1", at("2024-06-01T07:00:00Z"), &Zone::Named(tz));
        assert_eq!(
            j["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
            "2024-06-01T09:00:00+02:00"
        );
        assert_eq!(j["metadata"]["labels"]["a"], "b");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
}
