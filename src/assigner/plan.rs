//! Routing decisions, as a pure function: which worker gets which task.
//!
//! Rules, for each task in the order of service:
//! - **provider**: a task with a provider goes only to workers serving it; a task without
//!   one goes to any worker.
//! - **target**: a pinned task goes only to its target.
//! - **run**: a task of run R goes to workers serving R or serving no particular run; a
//!   task without a run goes only to workers serving no particular run.
//! - **capacity**: only workers with `load < capacity` (load = assigned + running).
//! - **provider budget**: a provider with a fleet-wide limit (`jr_providers`) gets at most
//!   its room this round (what its running limit and its start rate leave).
//! - **fallback**: a task of a paused provider that allows fallback goes under the first
//!   of its provider's fallback providers that has room and a worker for it (its limits
//!   count the task).
//! - **failover**: a worker an earlier attempt failed on is taken only when no other
//!   worker that can serve the task has room.
//! - among those, the **least loaded** by `load / capacity`; on equal load a worker
//!   healthier by more than [`HEALTH_MARGIN`] points; then round-robin.

use std::collections::HashMap;

use uuid::Uuid;

use crate::db::tasks::{Assignment, PendingTask};

/// How many points healthier a worker must be to win a tie on load (smaller differences
/// are noise: the round-robin spreads the load among them).
pub const HEALTH_MARGIN: i32 = 10;

/// A worker that may take tasks this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub providers: Vec<String>,
    pub capacity: i32,
    /// Tasks assigned to or running on it (grows as this round assigns).
    pub load: i32,
    pub run_id: Option<Uuid>,
    /// Its health score (0–100).
    pub health: i32,
}

impl Slot {
    fn free(&self) -> bool {
        self.load < self.capacity
    }

    /// Whether it can take `t` under `provider` (the task's own, or a fallback).
    fn serves(&self, t: &PendingTask, provider: &str) -> bool {
        let provider = provider.is_empty() || self.providers.iter().any(|p| p == provider);
        let run = match t.run_id {
            Some(r) => self.run_id.is_none() || self.run_id == Some(r),
            None => self.run_id.is_none(),
        };
        let target = t.target.as_ref().is_none_or(|n| *n == self.name);
        provider && run && target
    }

    /// `self.load / self.capacity < other.load / other.capacity`, in integers.
    fn less_loaded_than(&self, other: &Slot) -> bool {
        i64::from(self.load) * i64::from(other.capacity)
            < i64::from(other.load) * i64::from(self.capacity)
    }
}

/// Assigns what can be assigned; the rest stays pending. `room` is what each limited
/// provider may still start (spent as tasks are assigned); `rr` is the round-robin
/// cursor, kept by the caller across rounds.
pub fn plan(
    tasks: &[PendingTask],
    slots: &mut [Slot],
    room: &mut HashMap<String, i64>,
    rr: &mut usize,
) -> Vec<Assignment> {
    let n = slots.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    for t in tasks {
        // The providers it may go under: its own, or (its own paused) its fallbacks.
        let own = [t.provider.clone()];
        let routes: &[String] = match &t.fallback {
            Some(f) => &f.providers,
            None => &own,
        };
        let mut pick: Option<(usize, &str)> = None;
        for route in routes {
            if room.get(route).is_some_and(|r| *r <= 0) {
                continue;
            }
            if let Some(i) = best_slot(t, route, slots, *rr) {
                pick = Some((i, route));
                break;
            }
        }
        let Some((i, route)) = pick else { continue };
        let s = &mut slots[i];
        let mut reason = match &t.target {
            Some(_) => format!("pinned (load {}/{})", s.load, s.capacity),
            None if !route.is_empty() => format!(
                "least loaded serving provider '{route}' (load {}/{})",
                s.load, s.capacity
            ),
            None => format!("least loaded (load {}/{})", s.load, s.capacity),
        };
        if let Some(f) = &t.fallback {
            reason = format!("fallback to provider '{route}' ({}): {reason}", f.why);
        }
        let others: Vec<&str> = t
            .avoid
            .iter()
            .filter(|w| **w != s.name)
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            reason.push_str(&format!(
                ", avoiding {} (an earlier attempt failed there)",
                others.join(", ")
            ));
        }
        s.load += 1;
        *rr = (i + 1) % n;
        if let Some(r) = room.get_mut(route) {
            *r -= 1;
        }
        out.push(Assignment {
            task_id: t.id,
            worker: s.name.clone(),
            reason,
            routed_provider: (route != t.provider).then(|| route.to_string()),
        });
    }
    out
}

/// The worker for `t` under `provider`: free and serving it; one an earlier attempt did
/// not fail on before one it did; then the least loaded; then the healthier by more than
/// [`HEALTH_MARGIN`]; then the first from the round-robin cursor `rr`.
fn best_slot(t: &PendingTask, provider: &str, slots: &[Slot], rr: usize) -> Option<usize> {
    let n = slots.len();
    let avoided = |x: &Slot| t.avoid.contains(&x.name);
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (rr + k) % n;
        let s = &slots[i];
        if !s.free() || !s.serves(t, provider) {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let b = &slots[b];
                match (avoided(s), avoided(b)) {
                    (false, true) => true,
                    (true, false) => false,
                    _ if s.less_loaded_than(b) => true,
                    _ if b.less_loaded_than(s) => false,
                    _ => s.health > b.health + HEALTH_MARGIN,
                }
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, providers: &[&str], capacity: i32, load: i32) -> Slot {
        Slot {
            name: name.into(),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            capacity,
            load,
            run_id: None,
            health: 100,
        }
    }

    fn task(id: i64, provider: &str, target: Option<&str>) -> PendingTask {
        PendingTask {
            id,
            provider: provider.into(),
            target: target.map(Into::into),
            run_id: None,
            avoid: vec![],
            order: (false, 5, chrono::DateTime::UNIX_EPOCH, id),
            fallback: None,
        }
    }

    fn by_worker(a: &[Assignment]) -> Vec<(i64, &str)> {
        a.iter().map(|x| (x.task_id, x.worker.as_str())).collect()
    }

    #[test]
    fn a_retry_avoids_the_worker_it_failed_on_while_another_has_room() {
        let mut t = task(1, "", None);
        t.avoid = vec!["a".into()];
        // "a" is less loaded, but the attempt failed there: "b" takes it.
        let mut slots = vec![slot("a", &[], 4, 0), slot("b", &[], 4, 3)];
        let a = plan(
            std::slice::from_ref(&t),
            &mut slots,
            &mut HashMap::new(),
            &mut 0,
        );
        assert_eq!(by_worker(&a), [(1, "b")]);
        assert!(a[0].reason.contains("avoiding a"), "{}", a[0].reason);
        // Nobody else has room: "a" after all.
        let mut slots = vec![slot("a", &[], 4, 0), slot("b", &[], 4, 4)];
        let a = plan(&[t], &mut slots, &mut HashMap::new(), &mut 0);
        assert_eq!(by_worker(&a), [(1, "a")]);
    }

    #[test]
    fn a_provider_budget_caps_its_tasks_and_leaves_the_others_alone() {
        let mut slots = vec![slot("a", &["claude", "codex"], 10, 0)];
        let tasks = vec![
            task(1, "claude", None),
            task(2, "claude", None),
            task(3, "codex", None),
            task(4, "claude", None),
            task(5, "", None),
        ];
        let mut room = HashMap::from([("claude".to_string(), 1)]);
        let a = plan(&tasks, &mut slots, &mut room, &mut 0);
        assert_eq!(by_worker(&a), [(1, "a"), (3, "a"), (5, "a")]);
        assert_eq!(room["claude"], 0);
    }

    #[test]
    fn a_paused_providers_task_falls_back_in_order_and_spends_the_fallbacks_room() {
        let mut t = task(1, "claude", None);
        t.fallback = Some(crate::db::tasks::Fallback {
            providers: vec!["codex".into(), "ollama".into()],
            why: "provider 'claude' paused".into(),
        });
        let mut t2 = t.clone();
        t2.id = 2;
        let mut slots = vec![
            slot("c", &["claude"], 4, 0),
            slot("x", &["codex"], 4, 0),
            slot("o", &["ollama"], 4, 0),
        ];
        // codex has room for one: the second goes to ollama.
        let mut room = HashMap::from([("codex".to_string(), 1)]);
        let a = plan(&[t, t2], &mut slots, &mut room, &mut 0);
        assert_eq!(by_worker(&a), [(1, "x"), (2, "o")]);
        assert_eq!(a[0].routed_provider.as_deref(), Some("codex"));
        assert_eq!(a[1].routed_provider.as_deref(), Some("ollama"));
        assert!(
            a[0].reason
                .starts_with("fallback to provider 'codex' (provider 'claude' paused)"),
            "{}",
            a[0].reason
        );
        assert_eq!(room["codex"], 0);
        // A task under its own provider has no routed provider.
        let a = plan(&[task(3, "claude", None)], &mut slots, &mut room, &mut 0);
        assert_eq!(by_worker(&a), [(3, "c")]);
        assert_eq!(a[0].routed_provider, None);
    }

    #[test]
    fn on_equal_load_the_clearly_healthier_worker_wins() {
        let mut slots = vec![slot("a", &[], 4, 1), slot("b", &[], 4, 1)];
        slots[0].health = 40;
        let a = plan(
            &[task(1, "", None)],
            &mut slots,
            &mut HashMap::new(),
            &mut 0,
        );
        assert_eq!(by_worker(&a), [(1, "b")]);
        // Within the margin it is a tie: round-robin from the cursor.
        let mut slots = vec![slot("a", &[], 4, 1), slot("b", &[], 4, 1)];
        slots[0].health = 100 - HEALTH_MARGIN;
        let a = plan(
            &[task(1, "", None)],
            &mut slots,
            &mut HashMap::new(),
            &mut 0,
        );
        assert_eq!(by_worker(&a), [(1, "a")]);
        // Load comes first.
        let mut slots = vec![slot("a", &[], 4, 0), slot("b", &[], 4, 1)];
        slots[0].health = 10;
        let a = plan(
            &[task(1, "", None)],
            &mut slots,
            &mut HashMap::new(),
            &mut 0,
        );
        assert_eq!(by_worker(&a), [(1, "a")]);
    }

    #[test]
    fn least_loaded_by_ratio_and_never_past_capacity() {
        let mut slots = vec![slot("a", &[], 1, 0), slot("b", &[], 3, 0)];
        let tasks: Vec<_> = (1..=6).map(|i| task(i, "", None)).collect();
        let mut rr = 0;
        let a = plan(&tasks, &mut slots, &mut HashMap::new(), &mut rr);
        assert_eq!(a.len(), 4, "capacity 1 + 3");
        let to_a = a.iter().filter(|x| x.worker == "a").count();
        assert_eq!(to_a, 1);
        assert_eq!(slots[0].load, 1);
        assert_eq!(slots[1].load, 3);
        // b is at 1/3 when a is at 0/1 -> a is less loaded, etc.
        assert_eq!(by_worker(&a)[0], (1, "a"));
    }

    #[test]
    fn ties_go_round_robin() {
        let mut slots = vec![
            slot("a", &[], 10, 0),
            slot("b", &[], 10, 0),
            slot("c", &[], 10, 0),
        ];
        let tasks: Vec<_> = (1..=6).map(|i| task(i, "", None)).collect();
        let mut rr = 0;
        let a = plan(&tasks, &mut slots, &mut HashMap::new(), &mut rr);
        let names: Vec<&str> = a.iter().map(|x| x.worker.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn providers_targets_and_runs() {
        let run = Uuid::new_v4();
        let mut scoped = slot("scoped", &[], 5, 0);
        scoped.run_id = Some(run);
        let mut slots = vec![
            slot("claude_w", &["claude"], 5, 0),
            slot("plain", &[], 5, 0),
            scoped,
        ];
        let mut in_run = task(5, "", None);
        in_run.run_id = Some(run);
        let tasks = vec![
            task(1, "claude", None),
            task(2, "codex", None),
            task(3, "", Some("plain")),
            task(4, "", Some("ghost")),
            in_run,
        ];
        let mut rr = 0;
        let a = plan(&tasks, &mut slots, &mut HashMap::new(), &mut rr);
        let got = by_worker(&a);
        assert!(got.contains(&(1, "claude_w")));
        assert!(got.contains(&(3, "plain")));
        assert!(!got.iter().any(|(id, _)| *id == 2), "no codex worker");
        assert!(!got.iter().any(|(id, _)| *id == 4), "target not here");
        let five = got.iter().find(|(id, _)| *id == 5).unwrap().1;
        assert_ne!(five, "claude_w", "least loaded among plain and scoped");
        assert!(a
            .iter()
            .find(|x| x.task_id == 3)
            .unwrap()
            .reason
            .starts_with("pinned"));
        // A task without a run never goes to a run-scoped worker.
        let mut only_scoped = vec![slots[2].clone()];
        assert!(plan(
            &[task(9, "", None)],
            &mut only_scoped,
            &mut HashMap::new(),
            &mut 0
        )
        .is_empty());
    }
}
