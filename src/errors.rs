//! How an error reaches the user: its message and the chain of its causes.
//!
//! Errors keep their causes as `#[source]` and do not repeat them in their own message; the
//! edges (the commands, a run's summary, an answer's transport error) flatten the chain here,
//! in one place.

/// An error as the user reads it: its message, then each cause's, joined by ": " (the one
/// place that flattens an error chain; errors keep their causes as `#[source]`).
pub fn chain(e: &(dyn std::error::Error + '_)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // A cause whose words the message already carries (some libraries repeat their
        // inner error in their own message) is not said twice.
        if !msg.contains(&next) {
            msg.push_str(": ");
            msg.push_str(&next);
        }
        cause = c.source();
    }
    msg
}
