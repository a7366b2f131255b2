//! rusqlite errors in sqlx's shape: a statement that fails on the writer thread or a point
//! reader surfaces as the same `StoreError::Db(sqlx::Error::Database(..))` (with the same
//! constraint kinds) as one run through sqlx, so callers need not know which driver ran it.

use super::super::StoreError;

/// A SQLite error raised by a rusqlite statement, carried as an `sqlx::Error::Database`.
#[derive(Debug, Clone)]
pub(super) struct SqliteFailure {
    message: String,
    code: Option<i32>,
    kind: SqliteFailureKind,
}

#[derive(Debug, Clone, Copy)]
enum SqliteFailureKind {
    Unique,
    ForeignKey,
    NotNull,
    Check,
    Other,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.map(|c| c.to_string().into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        match self.kind {
            SqliteFailureKind::Unique => ErrorKind::UniqueViolation,
            SqliteFailureKind::ForeignKey => ErrorKind::ForeignKeyViolation,
            SqliteFailureKind::NotNull => ErrorKind::NotNullViolation,
            SqliteFailureKind::Check => ErrorKind::CheckViolation,
            SqliteFailureKind::Other => ErrorKind::Other,
        }
    }
}

impl SqliteFailure {
    pub(super) fn of(e: &rusqlite::Error) -> SqliteFailure {
        use rusqlite::ffi;
        let (code, kind) = match e {
            rusqlite::Error::SqliteFailure(f, _) => {
                let kind = match f.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        SqliteFailureKind::Unique
                    }
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => SqliteFailureKind::ForeignKey,
                    ffi::SQLITE_CONSTRAINT_NOTNULL => SqliteFailureKind::NotNull,
                    ffi::SQLITE_CONSTRAINT_CHECK => SqliteFailureKind::Check,
                    _ => SqliteFailureKind::Other,
                };
                (Some(f.extended_code), kind)
            }
            _ => (None, SqliteFailureKind::Other),
        };
        SqliteFailure {
            message: e.to_string(),
            code,
            kind,
        }
    }

    pub(super) fn into_store(self) -> StoreError {
        StoreError::Db(sqlx::Error::Database(Box::new(self)))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        SqliteFailure::of(&e).into_store()
    }
}
