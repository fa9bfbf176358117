//! The one place SQLSTATEs are chosen for errors raised from Rust.
//!
//! Catalog editing raises its errors in PL/pgSQL (sql/catalog.sql) with the same codes; this
//! module covers the engine: build, recommend, evaluate and the aggregate.
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgLogLevel;

/// An error for the user: a SQLSTATE, a primary message (lower case, no period) and optional
/// detail and hint (full sentences).
#[derive(Debug)]
pub struct AudienceError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl AudienceError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        AudienceError {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    fn report(self, level: PgLogLevel) {
        let mut r = ErrorReport::new(self.code, self.message, "pg_audience");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r.report(level);
    }

    /// Raises the error as a Postgres ERROR; never returns.
    pub fn raise(self) -> ! {
        self.report(PgLogLevel::ERROR);
        unreachable!("ERROR returned")
    }

    /// Reports it as a WARNING and returns.
    pub fn warn(self) {
        self.report(PgLogLevel::WARNING)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }
    pub fn null(what: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} cannot be null"),
        )
    }
    pub fn undefined(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, message)
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
        )
    }
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }
}

/// A user-supplied name or value as shown in a message: long text is cut, so a huge argument
/// cannot flood the log or the client.
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(MAX).collect::<String>())
    }
}

/// Unwraps an SPI result, reporting a failure as an internal error with the SPI message.
pub trait OrRaise<T> {
    fn or_raise(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrRaise<T> for Result<T, E> {
    fn or_raise(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => AudienceError::internal(format!("{what} failed: {e}")).raise(),
        }
    }
}
