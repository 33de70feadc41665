//! How the library's SQL is compiled in: every statement is a file under
//! `sql/`, and each module loads the files of its own directory with
//! [`sql_files!`].

/// Declares one `pub(crate) const NAME: &str` per file of `sql/DIR/`,
/// holding the file's text (compiled in with `include_str!`, so a missing
/// file fails the build):
///
/// ```ignore
/// crate::sql::sql_files!("queue" {
///     CLAIM => "claim.sql",
///     FINISH => "finish.sql",
/// });
/// ```
///
/// `tests/sql_files.rs` checks every file under `sql/` against a migrated
/// database. Exported (hidden) for the workspace's tools, which load
/// `tools/sql/` the same way.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_files {
    ($dir:literal { $($name:ident => $file:literal),* $(,)? }) => {
        $(
            #[doc = concat!("`sql/", $dir, "/", $file, "`.")]
            pub(crate) const $name: &str =
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/", $dir, "/", $file));
        )*
    };
}

pub(crate) use crate::sql_files;
