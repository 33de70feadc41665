//! The history budget: how much of a conversation the LLM is sent.
//!
//! A conversation grows by two messages a turn; sent whole, a long one would
//! end in the provider's context-length error on every attempt (and cost
//! the worker its memory). So a turn sends at most
//! `SKIPJACK_HISTORY_MAX_TOKENS` estimated tokens of stored history (see
//! [`crate::llm::estimate_tokens`]: a token per 4 characters, at least one
//! per message), chosen as follows:
//!
//! - the system prompt, the system messages the conversation starts with,
//!   always (counted first);
//! - then the newest messages that fit in what is left, newest first, up
//!   to the first that does not fit;
//! - starting at a user message: an assistant reply whose question fell out
//!   of the window is dropped too, as providers expect a user turn first.
//!
//! The new user message is sent on top of that, always: the API bounds its
//! size. The database applies the same rule when it reads a history
//! (`sql/chat/histories.sql`), reading only what it keeps; [`trim`] applies
//! it to a history held in memory (the one a turn was answered with, plus
//! that turn, which the cache then stores). Trimming a trimmed history plus
//! a turn gives the same messages as trimming the whole history plus the
//! turn, so what the cache holds is always what the database would read.

use super::store::HistoryMessage;
use crate::llm::{estimate_tokens, Role};

/// Default of `SKIPJACK_HISTORY_MAX_TOKENS`: fits the context of every
/// model in common use with room for the new message and the reply.
pub const DEFAULT_HISTORY_MAX_TOKENS: u32 = 32_000;

/// What one message costs against the budget.
pub fn cost(message: &HistoryMessage) -> u64 {
    u64::from(estimate_tokens(&message.content))
}

/// The messages of `history` (oldest first) the LLM is sent under a budget
/// of `max_tokens`: the leading system messages, then the newest messages
/// that fit, starting at a user message.
pub fn trim(history: &[HistoryMessage], max_tokens: u32) -> Vec<HistoryMessage> {
    let head = history
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    let head_cost: u64 = history[..head].iter().map(cost).sum();
    let allowance = u64::from(max_tokens).saturating_sub(head_cost);
    let mut start = history.len();
    let mut used = 0u64;
    while start > head {
        let next = used + cost(&history[start - 1]);
        if next > allowance {
            break;
        }
        used = next;
        start -= 1;
    }
    let first_user = (start..history.len())
        .find(|&i| history[i].role == Role::User)
        .unwrap_or(history.len());
    history[..head]
        .iter()
        .chain(&history[first_user..])
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> HistoryMessage {
        HistoryMessage {
            role: Role::parse(role).unwrap(),
            content: content.into(),
        }
    }

    fn roles_and_contents(h: &[HistoryMessage]) -> Vec<(&str, &str)> {
        h.iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn keeps_the_system_prompt_and_the_newest_turns_that_fit() {
        let history = vec![
            m("system", "be nice"), // 2 tokens
            m("user", "aaaaaaaa"),  // 2
            m("assistant", "bbbbbbbb"),
            m("user", "cccc"), // 1
            m("assistant", "dddd"),
        ];
        assert_eq!(trim(&history, 100), history);
        // 2 for the system prompt, 3 left: dddd, cccc, then bbbbbbbb would
        // make 4.
        assert_eq!(
            roles_and_contents(&trim(&history, 5)),
            [
                ("system", "be nice"),
                ("user", "cccc"),
                ("assistant", "dddd")
            ]
        );
        // 5 left: bbbbbbbb fits but its question does not: dropped too.
        assert_eq!(
            roles_and_contents(&trim(&history, 7)),
            [
                ("system", "be nice"),
                ("user", "cccc"),
                ("assistant", "dddd")
            ]
        );
        // The system prompt stays even when it alone is over the budget.
        assert_eq!(
            roles_and_contents(&trim(&history, 1)),
            [("system", "be nice")]
        );
    }

    #[test]
    fn trimming_a_trimmed_history_plus_a_turn_equals_trimming_the_whole() {
        let mut history = vec![m("system", "rules")];
        for i in 0..40 {
            history.push(m("user", &"q".repeat(1 + i * 7 % 23)));
            history.push(m("assistant", &"a".repeat(1 + i * 11 % 31)));
        }
        for budget in [1, 5, 17, 40, 100, 1000] {
            let mut cached = trim(&history[..3], budget);
            for end in (5..=history.len()).step_by(2) {
                cached.extend_from_slice(&history[end - 2..end]);
                cached = trim(&cached, budget);
                assert_eq!(
                    cached,
                    trim(&history[..end], budget),
                    "budget {budget}, {end}"
                );
                let sent: u64 = cached.iter().map(cost).sum();
                assert!(sent <= u64::from(budget).max(cost(&history[0])));
            }
        }
    }
}

/// How much history a chat turn sends, flattened into the worker's arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct HistoryArgs {
    /// Most estimated tokens (a token per 4 characters) of stored history
    /// sent to the LLM per turn: the conversation's leading system messages,
    /// then its newest turns that fit. The new user message is sent on top.
    /// Set it below the model's context window minus the longest reply and
    /// the longest user message.
    #[arg(long, env = "SKIPJACK_HISTORY_MAX_TOKENS", default_value_t = DEFAULT_HISTORY_MAX_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub history_max_tokens: u32,
}
