//! Identifier newtypes shared across modules.
//!
//! Every id is a UUID in the database; the newtypes keep a job id from being
//! passed where a tenant id is expected. Job ids are UUIDv7: time-ordered, so
//! new rows land at the right edge of the primary-key index instead of
//! scattering writes over it.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_newtype!(
    /// A job, live in `jobs` or finished in `job_history`.
    JobId
);
uuid_newtype!(
    /// A tenant: the unit of isolation; API keys belong to one.
    TenantId
);
uuid_newtype!(
    /// A conversation: its jobs run one at a time, in submission order.
    ConversationId
);
