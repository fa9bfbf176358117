//! The parameters of a build: the SQL arguments parsed and checked, the catalog's remembered
//! settings merged in, and their JSON forms (`models.params`, `catalogs.build_settings`).
use crate::api::spi_util::args;
use crate::error::{AudienceError, OrRaise};
use crate::model::als::AlsParams;
use crate::model::knn::KnnParams;
use crate::score::hybrid::{HybridParams, Own};
use crate::store::stored::PropertyKnobs;
use pgrx::prelude::*;

/// Model knobs of one build (NULL arguments take these defaults).
#[derive(Clone, Debug)]
pub struct BuildParams {
    pub als: Option<AlsParams>,
    pub knn: Option<KnnParams>,
    pub hybrid: HybridParams,
    /// Knobs for cross-sell audiences (`exclude_engaged => true`); set by `audience.tune`.
    pub cross_sell: HybridParams,
    /// Knobs tuned per property (override `hybrid` / `cross_sell` for that property).
    pub by_property: Vec<PropertyKnobs>,
    /// Whether a build tunes the knobs of untuned properties on a validation window itself.
    pub auto_tune: bool,
    /// Whether the ALS settings were given explicitly (then tuning keeps them).
    pub als_explicit: bool,
    /// Whether catalog-level scoring knobs were given explicitly (then builds do not auto-tune).
    pub knobs_explicit: bool,
    /// Whether a build activates its model only when the deploy guard finds it not worse.
    pub guard: bool,
}

/// The knobs of an untuned catalog: pure collaborative filtering (kNN and ALS shares averaged)
/// scaled by the square roots of the ALS-predicted volume and of the active days. It is the
/// setting validation picked, or next to it, on the demo shop (brand, category), the 20M-event
/// shop and MovieLens (README, "Quality"); untuned builds with the earlier default (prior 2,
/// activity_exp 0.5, volume 0, days_exp 0) scored hit@1% 0.39 / 0.65 / 0.18 on demo brand, demo
/// category and MovieLens genre, these 0.63 / 0.89 / 0.47 (bench/untuned.sql).
pub const DEFAULT_HYBRID: HybridParams = HybridParams {
    prior: f32::INFINITY,
    activity_exp: 0.5,
    knn_weight: 0.5,
    volume: 1.0,
    days_exp: 0.5,
    tenure_exp: 0.0,
    own: Own::Affinity,
};

fn positive_int(v: Option<i32>, what: &str, default: usize, min: i32, max: i32) -> usize {
    match v {
        None => default,
        Some(x) if x >= min && x <= max => x as usize,
        Some(x) => AudienceError::invalid(format!("{what} must be between {min} and {max}"))
            .detail(format!("The value given was {x}."))
            .raise(),
    }
}

/// A float as PostgreSQL prints it (Infinity, -Infinity, NaN).
fn sql_float(x: f64) -> String {
    match x {
        f64::INFINITY => "Infinity".into(),
        f64::NEG_INFINITY => "-Infinity".into(),
        x => x.to_string(),
    }
}

fn finite_nonneg(v: Option<f64>, what: &str, default: f32) -> f32 {
    match v {
        None => default,
        Some(x) if x.is_finite() && x >= 0.0 => x as f32,
        Some(x) => AudienceError::invalid(format!("{what} must be a finite number not below zero"))
            .detail(format!("The value given was {}.", sql_float(x)))
            .hint(
                "Pass NULL (or leave the argument out) to keep the remembered or default setting.",
            )
            .raise(),
    }
}

/// Parses build arguments into parameters (NULL = default).
#[allow(clippy::too_many_arguments)]
pub fn build_params(
    factors: Option<i32>,
    iterations: Option<i32>,
    regularization: Option<f64>,
    alpha: Option<f64>,
    neighbours: Option<i32>,
    prior: Option<f64>,
    activity_exp: Option<f64>,
    knn_weight: Option<f64>,
    volume: Option<f64>,
    days_exp: Option<f64>,
    tenure_exp: Option<f64>,
    own: Option<&str>,
    own_half_life_days: Option<f64>,
) -> BuildParams {
    let threads = crate::guc::threads();
    let d = AlsParams::default();
    let factors = positive_int(factors, "factors", d.factors, 0, 1024);
    let als = (factors > 0).then(|| AlsParams {
        factors,
        iterations: positive_int(iterations, "iterations", d.iterations, 1, 1000),
        regularization: finite_nonneg(regularization, "regularization", d.regularization),
        alpha: finite_nonneg(alpha, "alpha", d.alpha),
        threads,
        ..d
    });
    let kd = KnnParams::default();
    let neighbours = positive_int(neighbours, "neighbours", kd.neighbours, 0, 10_000);
    let knn = (neighbours > 0).then_some(KnnParams {
        neighbours,
        threads,
        ..kd
    });
    let kw = finite_nonneg(knn_weight, "knn_weight", DEFAULT_HYBRID.knn_weight);
    if kw > 1.0 {
        AudienceError::invalid("knn_weight must be between 0 and 1").raise();
    }
    let hybrid = HybridParams {
        // +infinity is the pure collaborative mode (the user's own history only scales the score).
        prior: match prior {
            Some(x) if x == f64::INFINITY => f32::INFINITY,
            other => finite_nonneg(other, "prior", DEFAULT_HYBRID.prior),
        },
        activity_exp: finite_nonneg(activity_exp, "activity_exp", DEFAULT_HYBRID.activity_exp),
        knn_weight: kw,
        volume: match volume {
            None => DEFAULT_HYBRID.volume,
            Some(v) if v == 0.0 || v == 1.0 || v == 2.0 => v as f32,
            Some(v) => AudienceError::invalid("volume must be 0, 1 or 2")
                .detail(format!("The value given was {}.", sql_float(v)))
                .hint("0 scales scores by observed activity, 1 by the activity the ALS model predicts, 2 by the item-kNN volume.")
                .raise(),
        },
        days_exp: finite_nonneg(days_exp, "days_exp", DEFAULT_HYBRID.days_exp),
        tenure_exp: finite_nonneg(tenure_exp, "tenure_exp", DEFAULT_HYBRID.tenure_exp),
        own: parse_own(own, own_half_life_days),
    };
    BuildParams {
        als,
        knn,
        hybrid,
        cross_sell: hybrid,
        by_property: Vec::new(),
        auto_tune: true,
        als_explicit: false,
        knobs_explicit: false,
        guard: false,
    }
}

/// The parameters of a catalog with nothing remembered.
pub fn build_params_default() -> BuildParams {
    build_params(
        None, None, None, None, None, None, None, None, None, None, None, None, None,
    )
}

/// The own-engagement measure from its name and half-life in days (NULL = the default).
pub fn parse_own(own: Option<&str>, half_life_days: Option<f64>) -> Own {
    if let Some(h) = half_life_days {
        if h.is_nan() || h <= 0.0 {
            AudienceError::invalid("own_half_life must be positive")
                .detail(format!("The value given was {} days.", sql_float(h)))
                .hint("Pass an interval such as '30 days', or NULL for no decay.")
                .raise();
        }
    }
    let Some(name) = own else {
        if half_life_days.is_some() {
            AudienceError::invalid("own_half_life needs own => 'days' or own => 'weight'").raise();
        }
        return DEFAULT_HYBRID.own;
    };
    match Own::from_name(name, half_life_days.map(|h| h as f32)) {
        Some(o @ (Own::Affinity | Own::Recent)) if half_life_days.is_some() => {
            AudienceError::invalid(format!("own => '{}' takes no half-life", o.name()))
                .hint("Only own => 'days' and own => 'weight' decay with own_half_life.")
                .raise()
        }
        Some(o) => o,
        None => AudienceError::invalid(format!(
            "unknown own-engagement measure \"{}\"",
            crate::error::shown(name)
        ))
        .hint("Use one of 'affinity', 'weight', 'days', 'recent'.")
        .raise(),
    }
}

/// Hybrid knobs from a JSON object such as `{"prior": 2, "activity_exp": 1, ...}` (as stored by
/// `audience.tune`); missing or invalid entries keep `base`'s values.
pub fn knobs_from_json(v: Option<&serde_json::Value>, base: HybridParams) -> HybridParams {
    let Some(v) = v else { return base };
    let num = |k: &str| {
        v.get(k).and_then(|x| match x {
            serde_json::Value::String(s) if s == "Infinity" => Some(f32::INFINITY),
            x => x.as_f64().map(|f| f as f32),
        })
    };
    let ok = |x: f32| x >= 0.0 && !x.is_nan();
    let own = v
        .get("own")
        .and_then(|o| o.as_str())
        .and_then(|o| Own::from_name(o, num("own_half_life_days")))
        .unwrap_or(base.own);
    HybridParams {
        own,
        prior: num("prior").filter(|&x| ok(x)).unwrap_or(base.prior),
        activity_exp: num("activity_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.activity_exp),
        knn_weight: num("knn_weight")
            .filter(|&x| (0.0..=1.0).contains(&x))
            .unwrap_or(base.knn_weight),
        volume: num("volume")
            .filter(|&x| x == 0.0 || x == 1.0 || x == 2.0)
            .unwrap_or(base.volume),
        days_exp: num("days_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.days_exp),
        tenure_exp: num("tenure_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.tenure_exp),
    }
}

pub fn knobs_json(p: &HybridParams) -> serde_json::Value {
    serde_json::json!({
        "prior": json_f32(p.prior), "activity_exp": p.activity_exp, "knn_weight": p.knn_weight, "volume": p.volume,
        "days_exp": p.days_exp, "tenure_exp": p.tenure_exp, "own": p.own.name(),
        "own_half_life_days": json_f32(p.own.half_life()),
    })
}

/// Per-property knobs as `{"<property>": {"params": {...}, "cross_sell": {...}}}`.
pub fn property_knobs_json(k: &[PropertyKnobs]) -> serde_json::Value {
    serde_json::Value::Object(
        k.iter()
            .map(|k| {
                (k.property.clone(), serde_json::json!({"params": knobs_json(&k.params), "cross_sell": knobs_json(&k.cross_params)}))
            })
            .collect(),
    )
}

/// Inverse of [`property_knobs_json`] (entries that do not parse are skipped).
pub fn property_knobs_from_json(
    v: Option<&serde_json::Value>,
    base: HybridParams,
) -> Vec<PropertyKnobs> {
    let Some(serde_json::Value::Object(m)) = v else {
        return Vec::new();
    };
    let mut out: Vec<PropertyKnobs> = m
        .iter()
        .map(|(prop, k)| {
            let params = knobs_from_json(k.get("params"), base);
            let cross_params = knobs_from_json(k.get("cross_sell"), params);
            PropertyKnobs {
                property: prop.clone(),
                params,
                cross_params,
            }
        })
        .collect();
    out.sort_by(|a, b| a.property.cmp(&b.property));
    out
}

/// A float for JSON, with +infinity as the string "Infinity" (JSON has no infinity).
pub fn json_f32(x: f32) -> serde_json::Value {
    if x == f32::INFINITY {
        serde_json::Value::String("Infinity".into())
    } else {
        serde_json::json!(x)
    }
}

pub fn params_json(p: &BuildParams) -> serde_json::Value {
    serde_json::json!({
        "als": p.als.as_ref().map(|a| serde_json::json!({
            "factors": a.factors, "iterations": a.iterations, "regularization": a.regularization,
            "alpha": a.alpha, "cg_steps": a.cg_steps, "seed": a.seed })),
        "knn": p.knn.as_ref().map(|k| serde_json::json!({ "neighbours": k.neighbours, "k1": k.k1, "b": k.b })),
        "hybrid": knobs_json(&p.hybrid),
        "cross_sell": knobs_json(&p.cross_sell),
        "properties": property_knobs_json(&p.by_property),
    })
}

/// The ALS settings a model was trained with, from its `params` (see [`params_json`]), with this
/// session's threads; None without ALS.
pub fn als_params_from_json(params: &serde_json::Value) -> Option<AlsParams> {
    let a = params.get("als")?;
    let d = AlsParams::default();
    Some(AlsParams {
        factors: a.get("factors")?.as_u64()? as usize,
        iterations: a
            .get("iterations")
            .and_then(|v| v.as_u64())
            .map_or(d.iterations, |v| v as usize),
        regularization: a.get("regularization")?.as_f64()? as f32,
        alpha: a.get("alpha")?.as_f64()? as f32,
        cg_steps: a
            .get("cg_steps")
            .and_then(|v| v.as_u64())
            .map_or(d.cg_steps, |v| v as usize),
        threads: crate::guc::threads(),
        ..d
    })
}

/// The item-kNN settings a model was trained with, from its `params` (see [`params_json`]), with
/// this session's threads; None without item-kNN.
pub fn knn_params_from_json(params: &serde_json::Value) -> Option<KnnParams> {
    let k = params.get("knn")?;
    let d = KnnParams::default();
    Some(KnnParams {
        neighbours: k.get("neighbours")?.as_u64()? as usize,
        k1: k
            .get("k1")
            .and_then(|v| v.as_f64())
            .map_or(d.k1, |v| v as f32),
        b: k.get("b")
            .and_then(|v| v.as_f64())
            .map_or(d.b, |v| v as f32),
        threads: crate::guc::threads(),
    })
}

/// Merges explicit (non-null) build arguments into the catalog's remembered settings and returns
/// the parameters to use: an argument given once applies to later builds (pg_cron, forget_user)
/// until given again.
pub fn remembered_params(cid: i32, explicit: serde_json::Value) -> BuildParams {
    let explicit: serde_json::Map<String, serde_json::Value> = match explicit {
        serde_json::Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    };
    let merged = Spi::get_one_with_args::<pgrx::JsonB>(
        "UPDATE audience.catalogs SET build_settings = build_settings OPERATOR(pg_catalog.||) $2 WHERE catalog_id OPERATOR(pg_catalog.=) $1 RETURNING build_settings",
        &args![cid, pgrx::JsonB(serde_json::Value::Object(explicit))],
    )
    .or_raise("reading build settings")
    .map(|j| j.0)
    .unwrap_or_default();
    let int = |k: &str| {
        merged
            .get(k)
            .and_then(|v| v.as_i64())
            .map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
    };
    let num = |k: &str| {
        merged.get(k).and_then(|v| match v {
            serde_json::Value::String(s) if s == "Infinity" => Some(f64::INFINITY),
            v => v.as_f64(),
        })
    };
    let mut p = build_params(
        int("factors"),
        int("iterations"),
        num("regularization"),
        num("alpha"),
        int("neighbours"),
        num("prior"),
        num("activity_exp"),
        num("knn_weight"),
        num("volume"),
        num("days_exp"),
        num("tenure_exp"),
        merged.get("own").and_then(|v| v.as_str()),
        num("own_half_life_days").filter(|h| h.is_finite()),
    );
    p.cross_sell = knobs_from_json(merged.get("cross_sell"), p.hybrid);
    p.by_property = property_knobs_from_json(merged.get("tuned"), p.hybrid);
    p.auto_tune = merged.get("tune").and_then(|v| v.as_bool()).unwrap_or(true);
    p.guard = merged
        .get("guard")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    p.als_explicit = ["factors", "iterations", "regularization", "alpha"]
        .iter()
        .any(|k| merged.get(*k).is_some());
    p.knobs_explicit = [
        "prior",
        "activity_exp",
        "knn_weight",
        "volume",
        "days_exp",
        "tenure_exp",
        "own",
        "cross_sell",
    ]
    .iter()
    .any(|k| merged.get(*k).is_some());
    p
}
