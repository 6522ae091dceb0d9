use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use maskserve::config::{LogArgs, ModelArgs, ServeArgs};
use maskserve::engine::{Engine, JobError};
use maskserve::metrics::Metrics;
use maskserve::types::{ImageResult, MaskFormat, PredictError, PredictOptions, StageTimings};

#[derive(Parser)]
#[command(
    name = "maskserve",
    version,
    about = "Mask R-CNN inference on ONNX Runtime or tract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on image files; prints one JSON result per image.
    Predict(Box<PredictArgs>),
    /// Run the HTTP server.
    Serve(Box<ServeArgs>),
    /// Test helper: reads COCO RLE JSON objects (one per line) on stdin and prints each decoded
    /// mask as a base64 PNG line, using maskserve's own decoder.
    #[command(hide = true)]
    DebugRleDecode,
    /// Test helper: MultiScaleRoIAlign (detection::poolers) on a JSON batch on stdin (features
    /// per level `[B, C, H, W]`, image sizes, boxes per image); prints the levels and the pooled
    /// values as JSON.
    #[command(hide = true)]
    DebugRoiAlign,
    /// Test helper: decodes images as `serve` does; writes each as binary PPM into --out and
    /// prints one JSON line per image (its size, or the error), or with --repeat prints the
    /// median decode time of maskserve's decoder and of the `image` crate's.
    #[command(hide = true)]
    DebugDecode(DebugDecodeArgs),
}

#[derive(clap::Args)]
struct DebugDecodeArgs {
    /// Folder for `<file name>.ppm` of each decoded image.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decode each image N times with both decoders; print the median times as JSON lines.
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    #[arg(long, default_value_t = maskserve::pipeline::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Overrides the model's roi_heads.score_thresh (applied before NMS, as torchvision).
    #[arg(long)]
    score_threshold: Option<f32>,
    /// Overrides the model's mask.threshold (mask = probability >= threshold).
    #[arg(long)]
    mask_threshold: Option<f32>,
    /// Overrides the model's roi_heads.detections_per_img.
    #[arg(long)]
    max_detections: Option<usize>,
    #[arg(long, value_enum, default_value_t = CliMaskFormat::Rle)]
    mask_format: CliMaskFormat,
    /// Run each image N times and print per-stage timings instead of the results.
    #[arg(long, value_name = "N")]
    bench: Option<usize>,
    /// Submit all images at once, so that images of one padded shape run as one batch (up to
    /// --max-batch-size); by default they run one at a time.
    #[arg(long)]
    batch: bool,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliMaskFormat {
    Rle,
    Polygon,
    Png,
    None,
}

impl From<CliMaskFormat> for MaskFormat {
    fn from(f: CliMaskFormat) -> Self {
        match f {
            CliMaskFormat::Rle => MaskFormat::Rle,
            CliMaskFormat::Polygon => MaskFormat::Polygon,
            CliMaskFormat::Png => MaskFormat::Png,
            CliMaskFormat::None => MaskFormat::None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli.log.filter();
    let r = match cli.command {
        Command::Predict(a) => {
            maskserve::logging::init(false, filter);
            predict(*a)
        }
        Command::Serve(a) => {
            maskserve::logging::init(a.log_json, filter);
            maskserve::server::run(*a).map(|()| ExitCode::SUCCESS)
        }
        Command::DebugRleDecode => rle_decode(),
        Command::DebugRoiAlign => roi_align(),
        Command::DebugDecode(a) => debug_decode(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Far beyond any single image; the CLI has no client to answer in time.
const CLI_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

fn predict(a: PredictArgs) -> Result<ExitCode> {
    let n = a.images.len();
    let model = a.model.clone();
    let loaded = maskserve::loader::load_on(
        &a.model.runtime()?,
        move |target, cpus| {
            let mut plan = model.plan(target, cpus)?;
            plan.engine.queue_size = plan.engine.queue_size.max(n);
            Ok(plan)
        },
        Arc::new(Metrics::new("maskserve")),
    )?;
    let engine = loaded.engine;
    let opts = PredictOptions {
        score_threshold: a.score_threshold,
        mask_threshold: a.mask_threshold,
        max_detections: a.max_detections,
        mask_format: a.mask_format.into(),
        ..Default::default()
    };
    let files: Vec<Vec<u8>> = a
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<Result<_>>()?;
    let mut stdout = std::io::stdout().lock();
    if let Some(n) = a.bench {
        for (path, bytes) in a.images.iter().zip(&files) {
            bench(&engine, path, bytes, &opts, n.max(1), &mut stdout)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let results: Vec<Result<ImageResult, PredictError>> = if a.batch {
        // One request per image, all queued before any runs: the batcher groups them.
        let receivers: Vec<_> = files
            .into_iter()
            .map(|b| engine.submit(vec![(b, opts.clone())], Instant::now() + CLI_TIMEOUT))
            .collect();
        receivers
            .into_iter()
            .map(|rx| match rx {
                Ok(rx) => one(Engine::wait(rx)),
                Err(_) => Err(PredictError::Inference("the engine queue is full".into())),
            })
            .collect()
    } else {
        files
            .into_iter()
            .map(|b| one(engine.run(vec![(b, opts.clone())], CLI_TIMEOUT)))
            .collect()
    };
    let mut failed = false;
    for (path, r) in a.images.iter().zip(results) {
        match r {
            Ok(r) => writeln!(stdout, "{}", serde_json::to_string(&r)?)?,
            Err(e) => {
                failed = true;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The result of a one-image request.
fn one(r: maskserve::engine::JobResult) -> Result<ImageResult, PredictError> {
    match r {
        Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
        Ok(_) => Err(PredictError::Inference(
            "internal: wrong number of results".into(),
        )),
        Err(JobError::Predict { error, .. }) => Err(error),
        Err(JobError::DeadlineExceeded) => Err(PredictError::Inference("timed out".into())),
    }
}

/// Median per-stage times over `n` runs (after one warm-up), as one JSON line.
fn bench(
    engine: &Engine,
    path: &std::path::Path,
    bytes: &[u8],
    opts: &PredictOptions,
    n: usize,
    out: &mut impl Write,
) -> Result<()> {
    let run = || one(engine.run(vec![(bytes.to_vec(), opts.clone())], CLI_TIMEOUT));
    run()?;
    let mut runs: Vec<(StageTimings, f64, usize)> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = run()?;
        runs.push((
            r.timings,
            t.elapsed().as_secs_f64() * 1e3,
            r.detections.len(),
        ));
    }
    let med = |f: &dyn Fn(&(StageTimings, f64, usize)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2] * 1000.0).round() / 1000.0
    };
    let line = serde_json::json!({
        "image": path.display().to_string(),
        "runs": n,
        "provider": engine.provider(),
        "detections": runs[0].2,
        "median_ms": {
            "decode_resize": med(&|r| r.0.decode + r.0.preprocess),
            "graph_backbone_rpn": med(&|r| r.0.backbone_rpn),
            "rpn_decode_nms": med(&|r| r.0.proposals),
            "graph_box_head": med(&|r| r.0.box_head),
            "detection_decode_nms": med(&|r| r.0.detections),
            "graph_mask_head": med(&|r| r.0.mask_head),
            "paste_encode": med(&|r| r.0.paste_encode),
            "total": med(&|r| r.1),
        }
    });
    writeln!(out, "{line}")?;
    Ok(())
}

fn rle_decode() -> Result<ExitCode> {
    use base64::Engine;
    use std::io::BufRead;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rle: maskserve::types::Rle = serde_json::from_str(&line)?;
        let dense = maskserve::encode::rle::decode(&rle).map_err(anyhow::Error::msg)?;
        let img = image::GrayImage::from_raw(
            rle.size[1],
            rle.size[0],
            dense.iter().map(|v| v * 255).collect(),
        )
        .context("mask size")?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        writeln!(
            out,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Deserialize)]
struct RoiAlignInput {
    /// Per level: `[B, C, H, W]` flattened.
    features: Vec<Vec<f32>>,
    level_sizes: Vec<(usize, usize)>,
    channels: usize,
    image_sizes: Vec<(usize, usize)>,
    boxes: Vec<Vec<[f32; 4]>>,
    output_size: usize,
    sampling_ratio: usize,
}

fn debug_decode(a: DebugDecodeArgs) -> Result<ExitCode> {
    use maskserve::decode::{decode, decode_with_image_crate};
    let mut stdout = std::io::stdout().lock();
    for path in &a.images {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(n) = a.repeat {
            let median = |f: &dyn Fn() -> bool| {
                let mut times: Vec<f64> = (0..n.max(1))
                    .map(|_| {
                        let t = Instant::now();
                        let ok = f();
                        (t.elapsed().as_secs_f64() * 1e3, ok)
                    })
                    .filter_map(|(ms, ok)| ok.then_some(ms))
                    .collect();
                times.sort_by(f64::total_cmp);
                times.get(times.len() / 2).copied()
            };
            let ours = median(&|| decode(&bytes, a.max_pixels).is_ok());
            let image_rs = median(&|| decode_with_image_crate(&bytes, a.max_pixels).is_ok());
            let line =
                serde_json::json!({"file": name, "maskserve_ms": ours, "image_crate_ms": image_rs});
            writeln!(stdout, "{line}")?;
            continue;
        }
        let line = match decode(&bytes, a.max_pixels) {
            Ok(img) => {
                if let Some(dir) = &a.out {
                    let mut ppm = format!("P6\n{} {}\n255\n", img.width, img.height).into_bytes();
                    ppm.extend_from_slice(&img.data);
                    std::fs::write(dir.join(format!("{name}.ppm")), ppm)?;
                }
                serde_json::json!({"file": name, "width": img.width, "height": img.height})
            }
            Err(e) => {
                let kind = match e {
                    PredictError::BadImage(_) => "bad_image",
                    PredictError::UnsupportedFormat(_) => "unsupported_format",
                    PredictError::TooManyPixels { .. } => "too_many_pixels",
                    _ => "other",
                };
                serde_json::json!({"file": name, "error": e.to_string(), "kind": kind})
            }
        };
        writeln!(stdout, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn roi_align() -> Result<ExitCode> {
    use maskserve::backend::Roi;
    use maskserve::detection::poolers::{multi_scale_roi_align_batch, setup_scales, LevelFeatures};
    let input: RoiAlignInput = serde_json::from_reader(std::io::stdin().lock())?;
    let max_h = input.image_sizes.iter().map(|s| s.0).max().unwrap_or(1);
    let max_w = input.image_sizes.iter().map(|s| s.1).max().unwrap_or(1);
    let (scales, mapper) = setup_scales(&input.level_sizes, (max_h, max_w));
    let levels: Vec<LevelFeatures> = input
        .features
        .iter()
        .zip(&input.level_sizes)
        .map(|(data, &(height, width))| LevelFeatures {
            data,
            batch: input.boxes.len(),
            channels: input.channels,
            height,
            width,
        })
        .collect();
    let rois: Vec<Roi> = input
        .boxes
        .iter()
        .enumerate()
        .flat_map(|(image, b)| b.iter().map(move |&bbox| Roi { image, bbox }))
        .collect();
    let level_of: Vec<usize> = rois.iter().map(|r| mapper.level(r.bbox)).collect();
    // Three threads, so that the split across threads is exercised too.
    let pooled = multi_scale_roi_align_batch(
        &levels,
        &input.image_sizes,
        &rois,
        input.output_size,
        input.sampling_ratio,
        3,
    )?;
    let levels = level_of;
    let out = serde_json::json!({"scales": scales, "levels": levels, "pooled": pooled});
    writeln!(std::io::stdout().lock(), "{out}")?;
    Ok(ExitCode::SUCCESS)
}
