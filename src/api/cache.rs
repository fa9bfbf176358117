//! Its SQL is fully schema-qualified (operators too): the audience functions do not pin
//! `search_path`, because Postgres would save and restore it for every row they return.
//!
//! Per-backend cache of the active model: models are immutable and ids never reused, so a cache
//! keyed by model id never serves a stale model. The model itself is the shared, memory-mapped
//! image of `shared.rs` (one copy for all backends), or a private copy when no file can be written.
use crate::api::spi_util::{args, query_rows};
use crate::error::{AudienceError, OrRaise};
use crate::score::hybrid::Scorer;
use crate::store::image::Served;
use crate::store::stored::Model;
use crate::util::codec::CodecError;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

pub struct Loaded {
    pub model_id: i64,
    /// The oid of `audience.models` the model was read from (see [`resolve_catalog`]).
    pub models_oid: u32,
    pub catalog: String,
    // Declared before `model` so it is dropped first: it borrows from the boxed model.
    pub scorer: Scorer<'static>,
    pub model: Box<Served>,
    /// Bytes of the image and whether they are the shared file mapping (else a private copy).
    pub bytes: usize,
    pub shared: bool,
}

impl Loaded {
    fn new(
        [models_oid, model_id]: [u64; 2],
        catalog: String,
        served: Served,
        bytes: usize,
        shared: bool,
    ) -> Loaded {
        let model = Box::new(served);
        // SAFETY: the Box's heap allocation does not move while `Loaded` lives, and `scorer` is
        // dropped before `model` (field order), so the 'static borrow never dangles.
        let r: &'static Served = unsafe { &*(model.as_ref() as *const Served) };
        let scorer = Scorer::from_parts(
            &r.ui,
            r.als.as_ref(),
            r.knn.as_ref(),
            Some((&r.days, r.reference_day)),
            r.parts.clone(),
        )
        .with_threads(crate::guc::threads());
        Loaded {
            model_id: model_id as i64,
            models_oid: models_oid as u32,
            catalog,
            scorer,
            model,
            bytes,
            shared,
        }
    }
}

thread_local! {
    static CACHE: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
}

/// The catalog's id, name and active model id (None before the first build), and the oid of
/// `audience.models` (new after `DROP EXTENSION` / `CREATE EXTENSION`, whose model ids start
/// again: a model is the pair).
pub fn resolve_catalog(catalog: Option<&str>) -> (i32, String, Option<i64>, u32) {
    let rows = query_rows(
        "SELECT c.catalog_id, c.name, c.active_model_id, 'audience.models'::pg_catalog.regclass::pg_catalog.oid FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) audience._catalog_id($1)",
        &args![catalog],
        |r| {
            (
                r.get::<i32>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<i64>(3).ok().flatten(),
                r.get::<pg_sys::Oid>(4).ok().flatten(),
            )
        },
    );
    match rows.into_iter().next() {
        Some((Some(id), Some(name), model, Some(oid))) => (id, name, model, oid.to_u32()),
        _ => AudienceError::internal("catalog vanished while being read").raise(),
    }
}

/// The active model of a catalog, loaded (or taken from this backend's cache).
pub fn active(catalog: Option<&str>) -> Rc<Loaded> {
    // A build that commits between resolving the active model and reading it deletes the
    // resolved model's rows: resolve again (each statement sees the latest commit) instead of
    // reporting a corrupt model.
    for _ in 0..3 {
        if let Some(loaded) = try_active(catalog) {
            return loaded;
        }
    }
    AudienceError::new(
        pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "the active model kept changing while being loaded",
    )
    .hint("Builds of this catalog committed three times during one call; retry.")
    .raise()
}

/// The active model, or None when it was replaced (its rows deleted) before it could be read.
fn try_active(catalog: Option<&str>) -> Option<Rc<Loaded>> {
    let (_, name, model_id, models_oid) = resolve_catalog(catalog);
    // The cache outlives role changes (SET ROLE, pooled connections): check the current role's
    // right to read the stored models on every call, not only when a model is loaded.
    let allowed = query_rows(
        "SELECT pg_catalog.has_table_privilege('audience.model_data'::pg_catalog.regclass, 'SELECT')",
        &[],
        |r| r.get::<bool>(1).ok().flatten(),
    )
    .into_iter()
    .next()
    .flatten()
    .unwrap_or(false);
    if !allowed {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied for table model_data",
        )
        .detail("Audiences are computed from the stored models in audience.model_data.")
        .hint("GRANT SELECT ON audience.model_data TO the role (see the README, Privileges).")
        .raise();
    }
    let Some(model_id) = model_id else {
        AudienceError::not_ready(format!(
            "catalog \"{}\" has no model yet",
            crate::error::shown(&name)
        ))
        .hint(format!(
            "Build one with SELECT * FROM audience.build('{}');",
            name.replace('\'', "''")
        ))
        .raise()
    };
    if let Some(hit) = CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|l| l.model_id == model_id && l.models_oid == models_oid)
            .cloned()
    }) {
        return Some(hit);
    }
    // The image file is named by the same pair.
    let tags = [models_oid as u64, model_id as u64];
    let t_open = std::time::Instant::now();
    let found = if crate::api::shared::enabled() {
        crate::api::shared::open(tags)
    } else {
        None
    };
    if found.is_some() {
        pgrx::debug1!(
            "audience: image of model {model_id} mapped and checked in {:.1} ms",
            t_open.elapsed().as_secs_f64() * 1000.0
        );
    }
    let (served, bytes, shared) = match found {
        Some((served, bytes)) => (served, bytes, true),
        None => {
            let model = load(model_id, &name)?;
            crate::api::shared::publish(&model, tags)
        }
    };
    let loaded = Rc::new(Loaded::new(tags, name, served, bytes, shared));
    // A shared mapping costs this backend no private memory: always kept. A private copy is kept
    // within audience.model_cache_mb.
    let keep = shared || bytes <= (crate::guc::CACHE_MB.get().max(0) as usize) << 20;
    CACHE.with(|c| *c.borrow_mut() = if keep { Some(loaded.clone()) } else { None });
    Some(loaded)
}

/// The stored model, or None when it has no rows any more (replaced by a build that committed
/// since it was resolved).
pub(crate) fn load(model_id: i64, catalog: &str) -> Option<Model> {
    let (rows, chunks) = Spi::connect(|client| {
        let table = client
            .select(
                "SELECT data FROM audience.model_data WHERE model_id OPERATOR(pg_catalog.=) $1 AND part OPERATOR(pg_catalog.=) 'model' ORDER BY chunk",
                None,
                &args![model_id],
            )
            .or_raise("reading the model");
        let mut bytes: Vec<u8> = Vec::new();
        let mut rows = 0usize;
        for row in table {
            let part: Option<&[u8]> = row.get(1).or_raise("reading the model");
            bytes.extend_from_slice(part.unwrap_or_default());
            rows += 1;
        }
        (rows, bytes)
    });
    if rows == 0 && !model_exists(model_id) {
        return None;
    }
    Some(Model::decode(&chunks).unwrap_or_else(|e| match e {
        // A model written by an earlier release (ALTER EXTENSION pg_audience UPDATE keeps the stored
        // models, whose format changed): not corrupt, just to be rebuilt.
        CodecError::UnsupportedVersion { found, max_supported } if found < max_supported => AudienceError::not_ready(format!(
            "the model of catalog \"{}\" was built by an earlier version of pg_audience and must be rebuilt",
            crate::error::shown(catalog)
        ))
        .detail(format!("Model {model_id} is stored in format {found}, which this version no longer reads (it reads formats up to {max_supported})."))
        .hint(format!("Rebuild it with SELECT * FROM audience.build('{}');", catalog.replace('\'', "''")))
        .raise(),
        e => AudienceError::corrupt(format!("stored model {model_id} cannot be read: {e}"))
            .hint("Rebuild it with audience.build().")
            .raise(),
    }))
}

fn model_exists(model_id: i64) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM audience.models m WHERE m.model_id OPERATOR(pg_catalog.=) $1)",
        &args![model_id],
    )
    .or_raise("reading the model")
    .unwrap_or(false)
}
