//! Benchmark of the pure core on synthetic data shaped like a big shop (no Postgres needed):
//! affinity accumulation, ALS and item-kNN training, scoring one audience, and the knob search of
//! `audience.tune` (the default grid over 40 values on a 100k-user sample, as `tune_on` does).
//!
//!     cargo bench --bench core                       # 1M users, 50k items, 20M events
//!     BENCH_USERS=200000 BENCH_ITEMS=20000 BENCH_EVENTS=4000000 cargo bench --bench core
//!
//! `BENCH_ONLY_SCAN=1` stops after the affinity state (then also a 3-way split and merge, as a
//! parallel scan's combine step, on `BENCH_THREADS` threads), `BENCH_ONLY_ALS=1` after ALS (kernel work), `BENCH_ONLY_KNN=1` after the item-kNN (no ALS),
//! `BENCH_ONLY_SERVING=1` after the audiences;
//! `BENCH_ALS_ITERATIONS` (10), `BENCH_ALS_FACTORS` (32) and `BENCH_ALS_CG` (3) ALS's iterations, factors and CG steps, `BENCH_THREADS` (2) the threads, `BENCH_REPEAT` (7) the audiences timed per line,
//! `BENCH_VALUE_GROUPS` (1) the taste groups in the audience's value, `BENCH_ALS_ITEM_ORDER=walk` ALS's item
//! half-sweeps in item-kNN's walk order (item-kNN trained first; the same factors).
use pg_audience::affinity::accumulator::{Accumulator, StateView};
use pg_audience::model::als::{
    continue_als, continue_als_rows, train_als, train_als_ordered, transpose_checked, AlsParams,
};
use pg_audience::model::days::DayIndex;
use pg_audience::model::knn::{train_knn_with, walk_order, KnnParams};
use pg_audience::score::hybrid::{
    score_from_components, Components, HybridParams, Own, Sample, Scorer,
};
use pg_audience::score::metrics::DEFAULT_GRID_LEN;
use pg_audience::score::topk::top_k_threads;
use pg_audience::score::tuning::{own_candidates, tune_knobs};
use pg_audience::util::rand::SplitMix64;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process so far (a steadier measure than wall time on a shared
/// machine).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(r.ru_utime) + t(r.ru_stime)
}

fn main() {
    let users = env("BENCH_USERS", 1_000_000);
    let items = env("BENCH_ITEMS", 50_000);
    let events = env("BENCH_EVENTS", 20_000_000);
    let threads = env("BENCH_THREADS", 2);
    // Audiences scored per measure (the median is printed); more for profiling them.
    let repeat = env("BENCH_REPEAT", 7).max(1);
    let groups = 50usize;
    println!("synthetic shop: {users} users, {items} items, {events} events, {threads} threads");
    let user_ids: Vec<String> = (0..users).map(|u| format!("{u}")).collect();
    let item_ids: Vec<String> = (0..items).map(|i| format!("SKU-{i:06}")).collect();
    let mut rng = SplitMix64(42);

    // Users have a taste group; 80% of their events fall in it; activity is heavy-tailed.
    let day = 86_400_000_000i64;
    let event = |rng: &mut SplitMix64| {
        let u = ((rng.next_unit().powf(2.0)) * users as f64) as usize % users;
        let g = u % groups;
        let i = if rng.next_unit() < 0.8 {
            (g + groups * (rng.next_u64() as usize % (items / groups))) % items
        } else {
            rng.next_u64() as usize % items
        };
        let w = [1.0, 1.0, 1.0, 3.0, 5.0][rng.next_u64() as usize % 5];
        let t = (rng.next_u64() % 180) as i64 * day;
        (u, i, w, t)
    };
    let t0 = Instant::now();
    let mut acc = Accumulator::new(0);
    for _ in 0..events {
        let (u, i, w, t) = event(&mut rng);
        acc.push(&user_ids[u], &item_ids[i], w, t, Some(30 * day), None);
    }
    let push_s = t0.elapsed().as_secs_f64();
    let only_scan = env("BENCH_ONLY_SCAN", 0) == 1;
    if only_scan {
        // The same rows in three states (as the leader and two workers of a parallel scan), two
        // of them sent as bytes and merged into the first as the combine step does (read in
        // place).
        let mut parts: Vec<Accumulator> = (0..3).map(|_| Accumulator::new(0)).collect();
        let mut rng = SplitMix64(42);
        let t = Instant::now();
        for k in 0..events {
            let (u, i, w, ts) = event(&mut rng);
            parts[(k / 65_536) % 3].push(&user_ids[u], &item_ids[i], w, ts, Some(30 * day), None);
        }
        let split_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let bytes: Vec<Vec<u8>> = parts[1..].iter_mut().map(|p| p.serialize()).collect();
        let serial_s = t.elapsed().as_secs_f64();
        parts.truncate(1);
        let mut lead = parts.pop().unwrap();
        // The leader's combine step runs on the session's threads (`audience.threads`).
        lead.set_threads(threads);
        let t = Instant::now();
        for b in bytes {
            lead.merge_view(StateView::parse(&b).unwrap());
        }
        let merge_s = t.elapsed().as_secs_f64();
        println!(
            "three states: pushes {split_s:.2} s, two serialized {serial_s:.2} s, decoded and merged into the third {merge_s:.2} s ({} rows)",
            lead.rows()
        );
    }
    let t1 = Instant::now();
    let state_mb = acc.memory_bytes() as f64 / 1e6;
    let aff = acc.finish().without_empty();
    let finish_s = t1.elapsed().as_secs_f64();
    println!(
        "accumulate: {:.2} s ({:.2} M rows/s), finish {:.2} s, state {:.0} MB, {} users x {} items, {} pairs",
        push_s,
        events as f64 / push_s / 1e6,
        finish_s,
        state_mb,
        aff.users.len(),
        aff.items.len(),
        aff.matrix.nnz()
    );
    if only_scan {
        return;
    }

    let conf = pg_audience::model::train::damped_on(&aff.matrix, threads);
    if env("BENCH_ONLY_KNN", 0) == 1 {
        knn_timed(&conf, threads);
        return;
    }
    let mut ok = || Ok(());
    let als_params = AlsParams {
        threads,
        iterations: env("BENCH_ALS_ITERATIONS", 10),
        factors: env("BENCH_ALS_FACTORS", 32),
        cg_steps: env("BENCH_ALS_CG", AlsParams::default().cg_steps),
        ..AlsParams::default()
    };
    // `BENCH_ALS_ITEM_ORDER=walk`: the item half-sweeps visit the items in item-kNN's walk order
    // (trained first, untimed here): the same factors (checksum), items sharing users together.
    let walk = (std::env::var("BENCH_ALS_ITEM_ORDER").as_deref() == Ok("walk")).then(|| {
        let knn = knn_timed(&conf, threads);
        let t = Instant::now();
        let order = walk_order(&knn);
        println!(
            "item order: item-kNN's walk ({:.3} s)",
            t.elapsed().as_secs_f64()
        );
        (transpose_checked(&conf, threads, &mut ok).unwrap(), order)
    });
    let (t2, cpu2) = (Instant::now(), cpu_seconds());
    let als = match &walk {
        Some((iu, order)) => train_als_ordered(&conf, iu, order, &als_params, &mut ok),
        None => train_als(&conf, &als_params, &mut ok),
    }
    .unwrap();
    // A checksum of the factors' bits: kernel changes must leave it unchanged (same arithmetic).
    let bits = |v: &[f32]| {
        v.iter().fold(0u64, |h, x| {
            (h ^ x.to_bits() as u64).wrapping_mul(0x100000001b3)
        })
    };
    println!(
        "ALS (factors {}, {} iterations, {} CG steps): {:.2} s ({:.2} s of CPU), factor checksum {:016x}",
        env("BENCH_ALS_FACTORS", 32),
        env("BENCH_ALS_ITERATIONS", 10),
        env("BENCH_ALS_CG", AlsParams::default().cg_steps),
        t2.elapsed().as_secs_f64(),
        cpu_seconds() - cpu2,
        bits(&als.user_factors) ^ bits(&als.item_factors).rotate_left(1)
    );
    // The incremental build's warm start: 2 more iterations over every user, or over every
    // eighth user only (about the share of users with new events after 1% new events).
    let p = AlsParams {
        threads,
        factors: env("BENCH_ALS_FACTORS", 32),
        cg_steps: env("BENCH_ALS_CG", AlsParams::default().cg_steps),
        ..AlsParams::default()
    };
    let t = Instant::now();
    let _ = continue_als(&conf, &p, als.clone(), 2, &mut ok).unwrap();
    let every = t.elapsed().as_secs_f64();
    let rows: Vec<usize> = (0..conf.n_rows).step_by(8).collect();
    let t = Instant::now();
    let _ = continue_als_rows(&conf, &p, als.clone(), &rows, 2, &mut ok).unwrap();
    println!(
        "ALS continued 2 iterations: every user {every:.2} s, every eighth user {:.2} s",
        t.elapsed().as_secs_f64()
    );
    if env("BENCH_ONLY_ALS", 0) == 1 {
        return;
    }
    let knn = knn_timed(&conf, threads);

    let t4 = Instant::now();
    let days = DayIndex::from_records(
        &aff.occasions.ptr,
        &aff.occasions.minute,
        &aff.occasions.value,
    );
    let ref_day = pg_audience::affinity::accumulator::day_of(aff.reference_us);
    let scorer = Scorer::new(&aff.matrix, Some(&als), Some(&knn)).with_days(&days, ref_day);
    println!(
        "scorer setup (once per model and backend): {:.3} s",
        t4.elapsed().as_secs_f64()
    );
    // The value: the items of `BENCH_VALUE_GROUPS` (1) taste groups, 2% of the items each (a
    // brand with 10% of the items, as on bench/scale.sh's shop, is 5).
    let (g, value_groups) = (
        groups as u32,
        env("BENCH_VALUE_GROUPS", 1).clamp(1, groups) as u32,
    );
    let value: Vec<u32> = (0..aff.items.len() as u32)
        .filter(|i| (i % g + g - 7) % g < value_groups)
        .collect();
    let p = HybridParams {
        prior: 2.0,
        activity_exp: 0.5,
        knn_weight: 0.5,
        volume: 0.0,
        days_exp: 0.0,
        tenure_exp: 0.0,
        own: Own::Affinity,
    };
    // Median and minimum milliseconds of `repeat` audiences (scores and the top 5%).
    let time_audience = |p: &HybridParams| {
        let (mut times, mut parts) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let t = Instant::now();
            let c = scorer.components_with(&value, &[p.own]);
            let t_c = t.elapsed().as_secs_f64() * 1e3;
            let s = score_from_components(&c, scorer.totals(), p);
            let t_s = t.elapsed().as_secs_f64() * 1e3;
            let k = aff.users.len() / 20;
            let top = top_k_threads(&s, k, &|u| s[u] > 0.0, threads);
            std::hint::black_box(top);
            let total = t.elapsed().as_secs_f64() * 1e3;
            times.push(total);
            parts.push((total, t_c, t_s - t_c, total - t_s));
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        parts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        (times[repeat / 2], times[0], parts[repeat / 2])
    };
    let (median, min, (_, c_ms, s_ms, k_ms)) = time_audience(&p);
    println!(
        "one audience (top 5%, {} items in the value): median {median:.1} ms (components {c_ms:.1}, scores {s_ms:.1}, top 5% {k_ms:.1}), min {min:.1} ms",
        value.len(),
    );

    // The same with the knobs automatic tuning chose for brands on bench/scale.sh's shop: own
    // engagement in distinct days, read from the day records in the same pass.
    let p_days = HybridParams {
        prior: 6.0,
        activity_exp: 1.0,
        knn_weight: 0.5,
        volume: 0.0,
        days_exp: 0.0,
        tenure_exp: 0.0,
        own: Own::Days(f32::INFINITY),
    };
    let (median, min, (_, c_ms, s_ms, k_ms)) = time_audience(&p_days);
    println!(
        "one audience, own engagement in distinct days: median {median:.1} ms (components {c_ms:.1}, scores {s_ms:.1}, top 5% {k_ms:.1}), min {min:.1} ms"
    );
    // recommend_audience's path: scores and engagement in one pass (Scorer::serve), then the top 5%.
    for (name, p) in [("affinity", &p), ("distinct days", &p_days)] {
        let mut times = Vec::new();
        for _ in 0..repeat {
            let t = Instant::now();
            let s = scorer
                .serve(&value, p)
                .expect("the one pass applies")
                .scores;
            let t_s = t.elapsed().as_secs_f64() * 1e3;
            let top = top_k_threads(&s, aff.users.len() / 20, &|u| s[u] > 0.0, threads);
            std::hint::black_box(top);
            times.push((t.elapsed().as_secs_f64() * 1e3, t_s));
        }
        times.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let (total, t_s) = times[repeat / 2];
        println!(
            "one audience in one pass (recommend_audience's path), own engagement {name}: median {total:.1} ms (scores {t_s:.1}, top 5% {:.1}), min {:.1} ms",
            total - t_s,
            times[0].0
        );
    }
    if env("BENCH_ONLY_SERVING", 0) == 1 {
        return;
    }

    // The knob search: components of 40 values on a 100k-user sample with every own measure, then
    // the own baselines and the grid for the best two of them, all users and cross-sell, as
    // api::tuning does for each ALS candidate and property.
    let t5 = Instant::now();
    let sample = Sample::every(&scorer, aff.users.len().div_ceil(100_000));
    let per_value: Vec<(Components, Vec<bool>)> = (0..40u32)
        .map(|g| {
            let items: Vec<u32> = (0..aff.items.len() as u32)
                .filter(|i| i % groups as u32 == g % groups as u32)
                .collect();
            let c = sample.components_with(&scorer, &items, &own_candidates(true));
            // Stand-in truth: a deterministic fifth of the users who engaged with the group.
            let pos =
                c.e.iter()
                    .enumerate()
                    .map(|(u, &e)| e > 0.0 && u % 5 == 0)
                    .collect();
            (c, pos)
        })
        .collect();
    let components_s = t5.elapsed().as_secs_f64();
    let totals = sample.pick(scorer.totals());
    let t6 = Instant::now();
    let cuts = [1.0, 5.0, 10.0, 20.0];
    let tuned = tune_knobs(&per_value, &totals, true, &cuts, threads, &mut || {});
    std::hint::black_box(tuned);
    println!(
        "knob search ({} own baselines + 2 x {DEFAULT_GRID_LEN} points x 40 values x {} users, all and cross-sell): {:.2} s (+ components {:.2} s)",
        own_candidates(true).len(),
        sample.users.len(),
        t6.elapsed().as_secs_f64(),
        components_s
    );
}

/// Item-kNN on `conf`, timed, with a checksum of its neighbours.
fn knn_timed(conf: &pg_audience::model::csr::Csr, threads: usize) -> pg_audience::model::csr::Csr {
    let mut ok = || Ok(());
    // As a build trains it: given the transpose ALS computed (not timed here).
    let iu = transpose_checked(conf, threads, &mut ok).unwrap();
    let t3 = Instant::now();
    let knn = train_knn_with(
        conf,
        Some(iu),
        &KnnParams {
            threads,
            ..KnnParams::default()
        },
        &mut ok,
    )
    .unwrap();
    // Its checksum: a change of the training's order must leave the neighbours unchanged.
    let knn_sum = knn
        .indptr
        .iter()
        .map(|&p| p as u64)
        .chain(knn.indices.iter().map(|&j| j as u64))
        .chain(knn.data.iter().map(|s| s.to_bits() as u64))
        .fold(0u64, |h, x| (h ^ x).wrapping_mul(0x100000001b3));
    // Its work: a multiply-add per pair of entries in each user's row (sum of row lengths squared).
    let mads: u64 = conf
        .indptr
        .windows(2)
        .map(|w| ((w[1] - w[0]) as u64).pow(2))
        .sum();
    println!(
        "item-kNN (100 neighbours): {:.2} s ({mads} multiply-adds), neighbour checksum {knn_sum:016x}",
        t3.elapsed().as_secs_f64()
    );
    knn
}
