//! The integrity checks: every reply must be the simulated provider's
//! `echo(N): MESSAGE` for its turn, and every conversation must end up
//! holding exactly the turns that completed, in order.
//!
//! A virtual user's turns are sequential (it submits turn k+1 only after
//! turn k finished), so when turn k is answered the conversation holds the
//! user and assistant messages of every earlier turn that *completed*, and
//! nothing else: `N = 2 × completed + 1`. With no failures that is
//! `echo(2k-1)`. A smaller N means history was lost (a turn's messages were
//! not appended, or were overwritten); a larger one means it was duplicated
//! or a later turn ran first; another MESSAGE means the job answered the
//! wrong turn.

use std::fmt;

/// The message a user sends on turn `k` (1-based).
pub fn turn_message(user_id: &str, k: u64) -> String {
    format!("turn {k} from user {user_id}")
}

/// The reply expected for `message` when `completed_before` earlier turns
/// of the conversation completed.
pub fn expected_reply(completed_before: u64, message: &str) -> String {
    format!("echo({}): {message}", 2 * completed_before + 1)
}

/// What was wrong with a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MismatchKind {
    /// N was smaller than expected: earlier turns are missing from the
    /// history the model saw.
    LostHistory,
    /// N was larger than expected: the history held turns twice, or a turn
    /// that should have come later.
    ExtraHistory,
    /// The reply echoes another message: the job answered the wrong turn.
    WrongMessage,
    /// Not `echo(N): …` at all, or no reply.
    Malformed,
}

impl MismatchKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MismatchKind::LostHistory => "lost history",
            MismatchKind::ExtraHistory => "extra history",
            MismatchKind::WrongMessage => "wrong message",
            MismatchKind::Malformed => "malformed reply",
        }
    }
}

/// A reply that is not the one its turn must get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub expected: String,
    pub got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {:?}, got {:?}",
            self.kind.as_str(),
            self.expected,
            self.got
        )
    }
}

/// Checks the reply to `message` given `completed_before` completed turns.
pub fn check_reply(completed_before: u64, message: &str, reply: &str) -> Result<(), Mismatch> {
    let expected = expected_reply(completed_before, message);
    if reply == expected {
        return Ok(());
    }
    let mismatch = |kind| Mismatch {
        kind,
        expected: expected.clone(),
        got: reply.to_owned(),
    };
    let Some((n, echoed)) = parse_echo(reply) else {
        return Err(mismatch(MismatchKind::Malformed));
    };
    let want = 2 * completed_before + 1;
    Err(mismatch(if echoed != message {
        MismatchKind::WrongMessage
    } else if n < want {
        MismatchKind::LostHistory
    } else if n > want {
        MismatchKind::ExtraHistory
    } else {
        // Same N and message but not equal: stray characters.
        MismatchKind::Malformed
    }))
}

/// `echo(N): MESSAGE` → `(N, MESSAGE)`.
fn parse_echo(reply: &str) -> Option<(u64, &str)> {
    let rest = reply.strip_prefix("echo(")?;
    let (n, rest) = rest.split_once("): ")?;
    Some((n.parse().ok()?, rest))
}

/// One stored message, as `GET /v1/conversations/{id}/messages` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
}

impl StoredMessage {
    pub fn new(role: &str, content: &str) -> Self {
        StoredMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// Where a conversation's stored messages first differ from the turns that
/// completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TranscriptProblem {
    /// Turn `turn` (1-based among the completed turns) is not where it
    /// should be and a later turn is: it was lost.
    LostTurn { turn: usize },
    /// An earlier turn (or the same one again) stands where turn `turn`
    /// should: reordered or duplicated.
    ReorderedTurn { turn: usize, found: String },
    /// The message at `index` is not what it should be.
    WrongMessage {
        index: usize,
        expected: StoredMessage,
        found: StoredMessage,
    },
    /// The conversation has `found` messages instead of `expected`.
    WrongLength { expected: usize, found: usize },
}

impl fmt::Display for TranscriptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranscriptProblem::LostTurn { turn } => write!(f, "completed turn {turn} is missing"),
            TranscriptProblem::ReorderedTurn { turn, found } => {
                write!(f, "turn {turn} out of order: found {found:?} in its place")
            }
            TranscriptProblem::WrongMessage {
                index,
                expected,
                found,
            } => write!(
                f,
                "message {index}: expected {} {:?}, found {} {:?}",
                expected.role, expected.content, found.role, found.content
            ),
            TranscriptProblem::WrongLength { expected, found } => {
                write!(f, "{found} messages stored, {expected} expected")
            }
        }
    }
}

/// Compares a conversation's stored messages with the user messages of its
/// completed turns (in the order they were sent): it must hold, for each,
/// the user message and then `echo(2i+1): message`, and nothing else.
/// Returns the first difference.
pub fn check_transcript(
    completed: &[String],
    stored: &[StoredMessage],
) -> Option<TranscriptProblem> {
    let expected: Vec<StoredMessage> = completed
        .iter()
        .enumerate()
        .flat_map(|(i, message)| {
            [
                StoredMessage::new("user", message),
                StoredMessage::new("assistant", &expected_reply(i as u64, message)),
            ]
        })
        .collect();
    for (index, (want, found)) in expected.iter().zip(stored).enumerate() {
        if want == found {
            continue;
        }
        let turn = index / 2 + 1;
        if found.role == "user" {
            if let Some(pos) = completed.iter().position(|m| *m == found.content) {
                return Some(if pos + 1 > turn {
                    TranscriptProblem::LostTurn { turn }
                } else {
                    TranscriptProblem::ReorderedTurn {
                        turn,
                        found: found.content.clone(),
                    }
                });
            }
        }
        return Some(TranscriptProblem::WrongMessage {
            index,
            expected: want.clone(),
            found: found.clone(),
        });
    }
    (expected.len() != stored.len()).then_some(TranscriptProblem::WrongLength {
        expected: expected.len(),
        found: stored.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_k_expects_echo_2k_minus_1() {
        let m = turn_message("u7", 3);
        assert_eq!(m, "turn 3 from user u7");
        assert_eq!(expected_reply(2, &m), "echo(5): turn 3 from user u7");
        assert!(check_reply(2, &m, "echo(5): turn 3 from user u7").is_ok());
    }

    #[test]
    fn bad_echoes_are_classified() {
        let m = turn_message("u", 3);
        let kind = |reply: &str| check_reply(2, &m, reply).unwrap_err().kind;
        assert_eq!(
            kind("echo(3): turn 3 from user u"),
            MismatchKind::LostHistory
        );
        assert_eq!(
            kind("echo(7): turn 3 from user u"),
            MismatchKind::ExtraHistory
        );
        assert_eq!(
            kind("echo(5): turn 2 from user u"),
            MismatchKind::WrongMessage
        );
        assert_eq!(kind("hello"), MismatchKind::Malformed);
        assert_eq!(
            kind("echo(5): turn 3 from user u "),
            MismatchKind::WrongMessage
        );
    }
}
