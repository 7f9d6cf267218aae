//! `shoal rollout status NAME`: polls the service until its latest change
//! is rolled out, printing kubectl-like progress lines as they change.

use std::time::Duration;

use anyhow::bail;
use shoal_api::objects::{ReplicaInfo, RolloutPhase};
use tokio::time::Instant;

use super::client::{Client, or_not_found};
use super::connect::encode;
use super::{RolloutHistoryArgs, RolloutStatusArgs, RolloutUndoArgs, ServiceView, print};

/// How often the service is polled.
const POLL: Duration = Duration::from_millis(500);

/// Where a rollout stands, as `rollout status` reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still going; the line to print.
    Waiting(String),
    /// Rolled out.
    Done,
    /// Stopped; why.
    Halted(String),
}

/// Reads a service's status the way kubectl reads a Deployment's; `old`
/// is how many of its replicas run another revision.
pub fn progress(view: &ServiceView, old: usize) -> Progress {
    let status = &view.status;
    let generation = view.record.generation.max(status.generation);
    if status.observed_generation < generation {
        return Progress::Waiting("Waiting for rollout spec update to be observed...".to_owned());
    }
    match status.rollout {
        RolloutPhase::Complete => return Progress::Done,
        RolloutPhase::Halted => {
            let message = status.message.clone().filter(|m| !m.trim().is_empty());
            return Progress::Halted(message.unwrap_or_else(|| "no reason given".to_owned()));
        }
        RolloutPhase::Progressing => {}
    }
    let (desired, updated, available) = (status.desired, status.updated, status.available);
    let reason = status.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
    // What holds new replicas back (a module being prepared, say) comes
    // first: the counts alone would not change for as long.
    if let (Some(reason), true) = (reason, updated < desired && available >= updated) {
        return Progress::Waiting(format!(
            "Waiting for rollout to finish: {updated} out of {desired} new replicas have been updated ({reason})..."
        ));
    }
    let what = if updated < desired {
        format!("{updated} out of {desired} new replicas have been updated")
    } else if old > 0 {
        format!("{old} old replicas are pending termination")
    } else if updated > desired {
        format!("{} extra replicas are pending termination", updated - desired)
    } else if available < updated {
        format!("{available} of {updated} updated replicas are available")
    } else if let Some(message) = status.message.as_deref().filter(|m| !m.trim().is_empty()) {
        message.trim().to_owned()
    } else {
        return Progress::Waiting("Waiting for rollout to finish...".to_owned());
    };
    Progress::Waiting(format!("Waiting for rollout to finish: {what}..."))
}

/// `shoal rollout undo NAME [--to-revision N]`: back to the previous
/// revision, or to revision N of the history.
pub async fn undo(args: RolloutUndoArgs) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Answer {
        service: ServiceView,
    }
    let client = Client::new(&args.connect)?;
    let mut path = format!("/v1/services/{}/rollback", encode(&args.name));
    if let Some(number) = args.to_revision {
        path.push_str(&format!("?toRevision={number}"));
    }
    let answer: Answer =
        client.post(&path).await.map_err(|e| or_not_found(e, || format!("service {:?} not found", args.name)))?;
    print(&format!(
        "service/{} rolled back (revision {}, generation {})\n",
        args.name, answer.service.status.revision, answer.service.record.generation
    ))?;
    Ok(())
}

/// `shoal rollout history NAME`: `REVISION HASH MODULE AGE CHANGE`, oldest
/// first, the current one marked.
pub async fn history(args: RolloutHistoryArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let path = format!("/v1/services/{}", encode(&args.name));
    let view: ServiceView =
        client.get(&path).await.map_err(|e| or_not_found(e, || format!("service {:?} not found", args.name)))?;
    let record = &view.record;
    let mut table = super::table::Table::new(vec!["REVISION", "HASH", "MODULE", "AGE", "CHANGE"]);
    let now = shoal_api::now_unix();
    if record.history.is_empty() {
        // Stored before histories were kept: the current revision only.
        let module = format!("sha256:{}", &record.module_digest[..12.min(record.module_digest.len())]);
        table.push(vec![
            "-".into(),
            record.revision(),
            module,
            super::table::age(now, record.updated_unix),
            "(current)".into(),
        ]);
    }
    let last = record.history.len().saturating_sub(1);
    for (index, entry) in record.history.iter().enumerate() {
        let module = super::table::short_digest(&entry.module_digest);
        let change = if index == last { format!("{} (current)", entry.change) } else { entry.change.clone() };
        table.push(vec![
            entry.number.to_string(),
            entry.revision.clone(),
            module,
            super::table::age(now, entry.applied_unix),
            change,
        ]);
    }
    print(&table.render())?;
    Ok(())
}

pub async fn status(args: RolloutStatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    let path = format!("/v1/services/{}", encode(name));
    let replicas_path = format!("/v1/replicas?service={}", encode(name));
    let deadline = (!args.timeout.is_zero()).then(|| Instant::now() + args.timeout);
    let mut last = String::new();
    loop {
        let view: ServiceView =
            client.get(&path).await.map_err(|e| or_not_found(e, || format!("service {name:?} not found")))?;
        let replicas: Vec<ReplicaInfo> = client.get(&replicas_path).await?;
        let old = replicas.iter().filter(|r| r.service == *name && r.revision != view.status.revision).count();
        match progress(&view, old) {
            Progress::Done => {
                print(&format!("service {name:?} successfully rolled out\n"))?;
                return Ok(());
            }
            Progress::Halted(why) => bail!("rollout of service {name:?} halted: {why}"),
            Progress::Waiting(line) => {
                if line != last {
                    print(&format!("{line}\n"))?;
                    last = line;
                }
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() + POLL > deadline) {
            let what = last.trim_start_matches("Waiting for rollout to finish: ").trim_end_matches("...");
            bail!(
                "timed out after {} waiting for the rollout of service {name:?} ({what})",
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::rows::tests::view;

    fn waiting(text: &str) -> Progress {
        Progress::Waiting(text.to_owned())
    }

    #[test]
    fn follows_a_rollout() {
        let mut v = view("kubia", 3, 3);
        assert_eq!(progress(&v, 0), Progress::Done);

        v.record.generation = 2;
        v.status.generation = 2;
        assert_eq!(progress(&v, 3), waiting("Waiting for rollout spec update to be observed..."));

        v.status.observed_generation = 2;
        v.status.rollout = RolloutPhase::Progressing;
        let cases = [
            ((1, 0), 3, "Waiting for rollout to finish: 1 out of 3 new replicas have been updated..."),
            ((3, 3), 1, "Waiting for rollout to finish: 1 old replicas are pending termination..."),
            ((3, 1), 0, "Waiting for rollout to finish: 1 of 3 updated replicas are available..."),
            ((5, 3), 0, "Waiting for rollout to finish: 2 extra replicas are pending termination..."),
            ((3, 3), 0, "Waiting for rollout to finish..."),
        ];
        for ((updated, available), old, line) in cases {
            (v.status.updated, v.status.available) = (updated, available);
            assert_eq!(progress(&v, old), waiting(line));
        }
        v.status.message = Some("starting kubia-4493e0-x2k4p".into());
        assert_eq!(progress(&v, 0), waiting("Waiting for rollout to finish: starting kubia-4493e0-x2k4p..."));
        // While the module is prepared, the line says so, not that old
        // replicas are pending.
        (v.status.updated, v.status.available) = (0, 0);
        v.status.message = Some("preparing module sha256:8a1c2e3f4a5b (compiling it, 13.2 MB, for 10s)".into());
        assert_eq!(
            progress(&v, 3),
            waiting(
                "Waiting for rollout to finish: 0 out of 3 new replicas have been updated \
                 (preparing module sha256:8a1c2e3f4a5b (compiling it, 13.2 MB, for 10s))..."
            )
        );

        v.status.rollout = RolloutPhase::Complete;
        assert_eq!(progress(&v, 1), Progress::Done);
    }

    #[test]
    fn halted_rollouts_say_why() {
        let mut v = view("kubia", 3, 3);
        v.status.rollout = RolloutPhase::Halted;
        let why = "replica kubia-4493e0-x2k4p keeps failing: exit status 1";
        v.status.message = Some(why.into());
        assert_eq!(progress(&v, 3), Progress::Halted(why.into()));
        v.status.message = None;
        assert_eq!(progress(&v, 3), Progress::Halted("no reason given".into()));
    }
}
