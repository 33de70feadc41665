//! Load profiles: how many virtual users are active at each moment of a run,
//! and the phases a report breaks the run into.
//!
//! A profile is a pure function of the time since the start, so the runner
//! only has to ask it ten times a second and tests can check it without a
//! clock.

use serde_json::{json, Value};
use std::time::Duration;

/// The shape of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Profile {
    /// `users` for `duration`.
    Steady { users: usize, duration: Duration },
    /// From `from` users to `to` users, linearly, over `duration`.
    Ramp {
        from: usize,
        to: usize,
        duration: Duration,
    },
    /// `users` until `at`, then `peak` for `hold`, then `users` again for
    /// `after`.
    Spike {
        users: usize,
        peak: usize,
        at: Duration,
        hold: Duration,
        after: Duration,
    },
    /// `users` for a long `duration`, with an interim report every
    /// `report_every` and the drift between the first and last windows.
    Soak {
        users: usize,
        duration: Duration,
        report_every: Duration,
    },
}

/// A named stretch of a run that the report summarises on its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// `steady`, `ramp`, `before`, `spike`, `after` or `soak`.
    pub name: &'static str,
    pub from: Duration,
    pub to: Duration,
    /// Users active during the phase (the larger end, for a ramp).
    pub users: usize,
}

impl Profile {
    /// `steady`, `ramp`, `spike` or `soak`.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Steady { .. } => "steady",
            Profile::Ramp { .. } => "ramp",
            Profile::Spike { .. } => "spike",
            Profile::Soak { .. } => "soak",
        }
    }

    /// How long users are started for; in-flight turns drain after it.
    pub fn duration(&self) -> Duration {
        match *self {
            Profile::Steady { duration, .. }
            | Profile::Ramp { duration, .. }
            | Profile::Soak { duration, .. } => duration,
            Profile::Spike {
                at, hold, after, ..
            } => at + hold + after,
        }
    }

    /// Users that should be active `t` after the start.
    pub fn users_at(&self, t: Duration) -> usize {
        match *self {
            Profile::Steady { users, .. } | Profile::Soak { users, .. } => users,
            Profile::Ramp { from, to, duration } => {
                if duration.is_zero() || t >= duration {
                    return to;
                }
                let f = t.as_secs_f64() / duration.as_secs_f64();
                (from as f64 + (to as f64 - from as f64) * f).round() as usize
            }
            Profile::Spike {
                users,
                peak,
                at,
                hold,
                ..
            } => {
                if t >= at && t < at + hold {
                    peak
                } else {
                    users
                }
            }
        }
    }

    /// The most users active at any time: how many virtual users to create.
    pub fn max_users(&self) -> usize {
        match *self {
            Profile::Steady { users, .. } | Profile::Soak { users, .. } => users,
            Profile::Ramp { from, to, .. } => from.max(to),
            Profile::Spike { users, peak, .. } => users.max(peak),
        }
    }

    /// The phases of the run, in order, without empty ones.
    pub fn phases(&self) -> Vec<Phase> {
        let phase = |name, from, to, users| Phase {
            name,
            from,
            to,
            users,
        };
        let all = match *self {
            Profile::Steady { users, duration } => {
                vec![phase("steady", Duration::ZERO, duration, users)]
            }
            Profile::Soak {
                users, duration, ..
            } => vec![phase("soak", Duration::ZERO, duration, users)],
            Profile::Ramp { from, to, duration } => {
                vec![phase("ramp", Duration::ZERO, duration, from.max(to))]
            }
            Profile::Spike {
                users,
                peak,
                at,
                hold,
                after,
            } => vec![
                phase("before", Duration::ZERO, at, users),
                phase("spike", at, at + hold, peak),
                phase("after", at + hold, at + hold + after, users),
            ],
        };
        all.into_iter().filter(|p| p.to > p.from).collect()
    }

    /// The soak's interim report period.
    pub fn report_every(&self) -> Option<Duration> {
        match *self {
            Profile::Soak { report_every, .. } if !report_every.is_zero() => Some(report_every),
            _ => None,
        }
    }

    /// The profile as it appears in the JSON report (durations in seconds).
    pub fn to_json(&self) -> Value {
        let s = |d: Duration| d.as_secs_f64();
        match *self {
            Profile::Steady { users, duration } => {
                json!({"kind": "steady", "users": users, "duration_s": s(duration)})
            }
            Profile::Ramp { from, to, duration } => {
                json!({"kind": "ramp", "from": from, "to": to, "duration_s": s(duration)})
            }
            Profile::Spike {
                users,
                peak,
                at,
                hold,
                after,
            } => json!({"kind": "spike", "users": users, "peak": peak, "at_s": s(at),
                        "hold_s": s(hold), "after_s": s(after)}),
            Profile::Soak {
                users,
                duration,
                report_every,
            } => json!({"kind": "soak", "users": users, "duration_s": s(duration),
                        "report_every_s": s(report_every)}),
        }
    }

    /// One line for people: `spike: 100 → 1000 users at 60 s for 120 s, then
    /// 100 for 60 s`.
    pub fn describe(&self) -> String {
        let s = |d: Duration| format_duration(d);
        match *self {
            Profile::Steady { users, duration } => {
                format!("steady: {users} users for {}", s(duration))
            }
            Profile::Ramp { from, to, duration } => {
                format!("ramp: {from} → {to} users over {}", s(duration))
            }
            Profile::Spike {
                users,
                peak,
                at,
                hold,
                after,
            } => format!(
                "spike: {users} → {peak} users at {} for {}, then {users} for {}",
                s(at),
                s(hold),
                s(after)
            ),
            Profile::Soak {
                users,
                duration,
                report_every,
            } => format!(
                "soak: {users} users for {}, reports every {}",
                s(duration),
                s(report_every)
            ),
        }
    }
}

/// Parses `1.5s`, `500ms`, `5m`, `2h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 500ms, 5m, 1h)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `90 s`, `5 min`, `1 h 30 min`, `250 ms`: for summaries.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if d.is_zero() {
        "0 s".to_owned()
    } else if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else if secs < 120.0 || secs.fract() != 0.0 {
        format!("{} s", trim_float(secs))
    } else if secs < 7200.0 && (secs as u64).is_multiple_of(60) {
        format!("{} min", secs as u64 / 60)
    } else {
        format!("{} s", trim_float(secs))
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn spike_goes_up_and_back() {
        let p = Profile::Spike {
            users: 100,
            peak: 1000,
            at: secs(60),
            hold: secs(120),
            after: secs(60),
        };
        assert_eq!(p.users_at(secs(0)), 100);
        assert_eq!(p.users_at(secs(59)), 100);
        assert_eq!(p.users_at(secs(60)), 1000);
        assert_eq!(p.users_at(secs(179)), 1000);
        assert_eq!(p.users_at(secs(180)), 100);
        assert_eq!(p.duration(), secs(240));
        assert_eq!(p.max_users(), 1000);
        let names: Vec<_> = p.phases().iter().map(|p| p.name).collect();
        assert_eq!(names, ["before", "spike", "after"]);
    }

    #[test]
    fn ramp_is_linear() {
        let p = Profile::Ramp {
            from: 10,
            to: 110,
            duration: secs(100),
        };
        assert_eq!(p.users_at(secs(0)), 10);
        assert_eq!(p.users_at(secs(50)), 60);
        assert_eq!(p.users_at(secs(100)), 110);
        assert_eq!(p.max_users(), 110);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), secs(300));
        assert_eq!(parse_duration("1h").unwrap(), secs(3600));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(secs(1800)), "30 min");
        assert_eq!(format_duration(secs(90)), "90 s");
        assert_eq!(format_duration(Duration::ZERO), "0 s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250 ms");
    }
}
