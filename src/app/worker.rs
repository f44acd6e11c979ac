//! Generation off the UI: one worker owns the loaded pipeline (kept between runs of the same
//! model) and reports progress as messages; the UI polls them every frame. The worker is one
//! async loop over jobs: on the desktop a thread blocks on it, in a browser it is a task on the
//! page's event loop that yields whenever it waits for the GPU or the network.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};

use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_util::StreamExt;

use crate::engine::{Context, DeviceChoice, LimitsProfile};
use crate::hub;
use crate::model::nn::Precision;
use crate::pipeline::edit::EditRequest;
use crate::pipeline::ranking::{Candidates, ClapScorer};
use crate::pipeline::variation::VariationRequest;
use crate::pipeline::{Event, Mel, Output, Pipeline, Request, Residency};

/// Dispatches per submit while the app's renderer shares the queue: on a software adapter a
/// full-size step is a minute of work, which would otherwise hold every frame back until it ends;
/// on a GPU the extra waits cost well under a millisecond each.
const DISPATCHES_PER_SUBMIT: usize = 32;

/// Which context runs the networks for a device setting: what [`choose_backend`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The renderer's device (eframe's), shared with the engine: one device, one wgpu.
    Shared,
    /// A GPU device of the engine's own: `gpu` where there is no renderer's device to share.
    OwnGpu,
    /// The CPU backend ([`Context::cpu`]); `fell_back` when `auto` chose it because the only
    /// adapter is a software rasteriser (lavapipe, SwiftShader, WARP) or there is none.
    Cpu { fell_back: bool },
}

impl Backend {
    /// Whether `self` and `other` run on the same context (a model loaded on one serves both).
    pub fn same_context(self, other: Backend) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// The backend of the device setting `choice`, where the renderer's device (when there is one)
/// is of type `shared`: `cpu` is the CPU backend; `gpu` the renderer's device, or one of the
/// engine's own without it; `auto` the renderer's device where it is a real GPU, else (a software
/// adapter, or none) the CPU backend, which is much faster than a software rasteriser. In a
/// browser `auto` keeps a software adapter: the CPU backend there is one thread sharing the
/// page's event loop. A browser without WebGPU has no adapter to keep (the renderer draws with
/// WebGL2, which cannot compute), so there it is the CPU backend.
pub fn choose_backend(choice: DeviceChoice, shared: Option<wgpu::DeviceType>) -> Backend {
    let in_browser = cfg!(target_arch = "wasm32");
    match (choice, shared) {
        (DeviceChoice::Cpu, _) => Backend::Cpu { fell_back: false },
        (DeviceChoice::Gpu, Some(_)) => Backend::Shared,
        (DeviceChoice::Gpu, None) => Backend::OwnGpu,
        (DeviceChoice::Auto, Some(kind)) if kind != wgpu::DeviceType::Cpu || in_browser => {
            Backend::Shared
        }
        (DeviceChoice::Auto, _) => Backend::Cpu { fell_back: true },
    }
}

/// What runs `ctx`'s graphs, for the status line and the WAV comment: [`Context::backend_name`],
/// but where a browser hides the adapter's name, its vendor and architecture if given.
pub fn backend_label(ctx: &Context) -> String {
    let info = ctx.adapter_info();
    if ctx.is_cpu() || !info.name.is_empty() {
        return ctx.backend_name();
    }
    let name = match info.driver_info.as_str() {
        "" => "the browser's GPU",
        given => given,
    };
    format!("GPU: {name} ({:?})", info.backend)
}

/// One generation, as the UI asked for it.
pub struct Job {
    pub id: u64,
    /// What runs the networks; a change makes a new context and reloads the model on it.
    pub device: DeviceChoice,
    /// A Hugging Face repo id or a local folder.
    pub model: String,
    /// Where the networks' weights live between stages; a change reloads the model.
    pub residency: Residency,
    /// The CLAP model ranking and variations use (a repo id or a local folder); `None` is the
    /// model's companion ([`hub::clap_companion`]).
    pub clap: Option<String>,
    pub task: Task,
}

/// What a job makes: a clip from text, ranked candidates, an edit of a clip, or a variation.
pub enum Task {
    Generate(Request),
    /// `n` candidates of the request, scored by CLAP.
    Candidates(Request, usize),
    Edit(Box<EditRequest>),
    Vary(Box<VariationRequest>),
}

impl Task {
    fn needs_clap(&self) -> bool {
        matches!(self, Task::Candidates(..) | Task::Vary(_))
    }
}

/// What the worker tells the UI about job `id`.
#[derive(Debug)]
pub enum Report {
    /// Fetching model files: `fraction` of the bytes so far.
    Downloading {
        id: u64,
        file: String,
        fraction: f32,
    },
    /// What runs the networks of the job ([`backend_label`]), told before loading.
    Backend {
        id: u64,
        name: String,
        cpu: bool,
    },
    /// Loading the model onto the GPU (the slow part of a first run).
    Loading {
        id: u64,
        model: PathBuf,
        residency: Residency,
    },
    /// The model is on the GPU and denoising starts.
    Started {
        id: u64,
        sample_rate: u32,
    },
    Step {
        id: u64,
        i: usize,
        n: usize,
        preview: Mel,
    },
    /// Candidate `k` (1-based) of `n` starts.
    Candidate {
        id: u64,
        k: usize,
        n: usize,
    },
    /// CLAP scores the candidates.
    Scoring {
        id: u64,
    },
    Done {
        id: u64,
        output: Box<Output>,
    },
    /// Every candidate of a ranked run, with their scores.
    Ranked {
        id: u64,
        candidates: Box<Candidates>,
    },
    Cancelled {
        id: u64,
    },
    Failed {
        id: u64,
        message: String,
    },
}

impl Report {
    /// The job the report is about.
    pub fn id(&self) -> u64 {
        match self {
            Report::Downloading { id, .. }
            | Report::Backend { id, .. }
            | Report::Loading { id, .. }
            | Report::Started { id, .. }
            | Report::Step { id, .. }
            | Report::Candidate { id, .. }
            | Report::Scoring { id }
            | Report::Done { id, .. }
            | Report::Ranked { id, .. }
            | Report::Cancelled { id }
            | Report::Failed { id, .. } => *id,
        }
    }
}

/// The UI's handle on the worker.
pub struct Worker {
    jobs: Option<UnboundedSender<(Job, Arc<AtomicBool>)>>,
    reports: Receiver<Report>,
    cancel: Option<Arc<AtomicBool>>,
    #[cfg(not(target_arch = "wasm32"))]
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker. `shared` is the engine's context on the renderer's device (eframe's in
    /// the app): what a job's device setting runs on where [`choose_backend`] says
    /// [`Backend::Shared`]; [`Backend::OwnGpu`] makes a device with the limits of `limits` on
    /// first use. `wake` is called after every report (the UI asks for a repaint).
    pub fn spawn(
        shared: Option<Context>,
        limits: LimitsProfile,
        precision: Precision,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (job_tx, mut job_rx) = unbounded::<(Job, Arc<AtomicBool>)>();
        let (report_tx, report_rx) = channel();
        // A closure making the loop, so that the loop's future (not `Send`: it holds the
        // pipeline's event callbacks across awaits) is made on the thread that runs it.
        let work = move || async move {
            let mut state = WorkerState {
                shared,
                ctx: None,
                limits,
                precision,
                loaded: None,
                scorer: None,
            };
            while let Some((job, cancel)) = job_rx.next().await {
                let report = |r: Report| {
                    // The UI may be gone while a job finishes; nothing to do then.
                    let _ = report_tx.send(r);
                    wake();
                };
                state.run(job, &cancel, &report).await;
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let thread = std::thread::Builder::new()
                .name("audioldm-worker".into())
                .spawn(move || pollster::block_on(work()))
                .ok();
            Self {
                jobs: thread.as_ref().map(|_| job_tx),
                reports: report_rx,
                cancel: None,
                thread,
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            wasm_bindgen_futures::spawn_local(work());
            Self {
                jobs: Some(job_tx),
                reports: report_rx,
                cancel: None,
            }
        }
    }

    /// Queues `job`; an unfinished earlier job is cancelled first.
    pub fn submit(&mut self, job: Job) -> Result<(), String> {
        self.cancel();
        let cancel = Arc::new(AtomicBool::new(false));
        let sender = self
            .jobs
            .as_ref()
            .ok_or("the generation thread could not be started")?;
        sender
            .unbounded_send((job, cancel.clone()))
            .map_err(|_| "the generation thread has stopped".to_string())?;
        self.cancel = Some(cancel);
        Ok(())
    }

    /// Asks the running job to stop at the next step boundary.
    pub fn cancel(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.store(true, Ordering::Relaxed);
        }
    }

    /// The next report, if one is waiting.
    pub fn poll(&self) -> Option<Report> {
        self.reports.try_recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        self.jobs = None;
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(thread) = self.thread.take() {
            // A job stops at its next step; a model still loading is waited for.
            let _ = thread.join();
        }
    }
}

struct WorkerState {
    /// The renderer's device, if it has one.
    shared: Option<Context>,
    /// The context the last job ran on, and the backend it is.
    ctx: Option<(Backend, Context)>,
    limits: LimitsProfile,
    precision: Precision,
    /// The last model loaded, by the folder it came from and its residency.
    loaded: Option<Pipeline>,
    /// The last CLAP model loaded.
    scorer: Option<ClapScorer>,
}

/// What a job made.
enum Made {
    Clip(Output),
    Ranked(Candidates),
}

impl WorkerState {
    async fn run(&mut self, job: Job, cancel: &AtomicBool, report: &dyn Fn(Report)) {
        let id = job.id;
        match self.generate(job, cancel, report).await {
            Ok(Made::Clip(output)) => report(Report::Done {
                id,
                output: Box::new(output),
            }),
            Ok(Made::Ranked(candidates)) => report(Report::Ranked {
                id,
                candidates: Box::new(candidates),
            }),
            Err(crate::Error::Cancelled) => report(Report::Cancelled { id }),
            Err(e) => report(Report::Failed {
                id,
                message: failure_message(&e),
            }),
        }
    }

    async fn generate(
        &mut self,
        job: Job,
        cancel: &AtomicBool,
        report: &dyn Fn(Report),
    ) -> crate::Result<Made> {
        let id = job.id;
        let mut progress = |p: hub::DownloadProgress| {
            // Overall where the total is known up front (the desktop lists the repo first);
            // else per file (the browser learns each size as the file arrives).
            let (done, total) = if p.overall_total > 0 {
                (p.overall_downloaded, p.overall_total)
            } else {
                (p.downloaded, p.total)
            };
            report(Report::Downloading {
                id,
                file: p.file.clone(),
                fraction: if total == 0 {
                    0.0
                } else {
                    done as f32 / total as f32
                },
            })
        };
        let dir = resolve(&job.model, &hub::AUDIOLDM, &mut progress).await?;
        let clap_dir = match job.task.needs_clap() {
            true => {
                let Some(clap) = job
                    .clap
                    .as_deref()
                    .or_else(|| hub::clap_companion(&job.model))
                else {
                    return Err(crate::Error::Input(format!(
                        "ranking candidates and variations need a CLAP model, and {} has no \
                         known companion: name one in the CLAP model field",
                        job.model
                    )));
                };
                let dir = resolve(clap, &hub::CLAP, &mut progress)
                    .await
                    .map_err(|e| {
                        crate::Error::Input(format!(
                            "ranking candidates and variations need the CLAP model {clap}: {e}"
                        ))
                    })?;
                Some(dir)
            }
            false => None,
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(crate::Error::Cancelled);
        }
        let ctx = self.context(job.device).await?;
        report(Report::Backend {
            id,
            name: backend_label(&ctx),
            cpu: ctx.is_cpu(),
        });
        let reuse = self
            .loaded
            .as_ref()
            .is_some_and(|p| p.model_dir() == dir && p.residency() == job.residency);
        if !reuse {
            // Free the old model before loading the new one: both may not fit.
            self.loaded = None;
            report(Report::Loading {
                id,
                model: dir.clone(),
                residency: job.residency,
            });
            let pipeline = Pipeline::load_async(&ctx, &dir, self.precision, job.residency).await?;
            // The renderer draws on the same queue: leave it room between slices of a step.
            pipeline.set_max_dispatches_per_submit(Some(DISPATCHES_PER_SUBMIT));
            self.loaded = Some(pipeline);
        }
        let pipeline = self
            .loaded
            .as_ref()
            .ok_or_else(|| crate::Error::Input("the model did not load".into()))?;
        if let Some(clap_dir) = &clap_dir
            && self.scorer.as_ref().is_none_or(|s| s.dir() != clap_dir)
        {
            self.scorer = None;
            report(Report::Loading {
                id,
                model: clap_dir.clone(),
                residency: job.residency,
            });
            let fallback_tokenizer = pipeline.model_dir().join("tokenizer");
            self.scorer = Some(
                ClapScorer::load_async(&ctx, clap_dir, self.precision, &fallback_tokenizer).await?,
            );
        }
        let scorer = || {
            self.scorer
                .as_ref()
                .ok_or_else(|| crate::Error::Input("the CLAP model did not load".into()))
        };
        report(Report::Started {
            id,
            sample_rate: pipeline.sample_rate(),
        });
        let on_event = |event| match event {
            Event::Step { i, n, preview } => report(Report::Step { id, i, n, preview }),
            Event::Candidate { k, n } => report(Report::Candidate { id, k, n }),
            Event::Scoring => report(Report::Scoring { id }),
            _ => {}
        };
        Ok(match &job.task {
            Task::Generate(request) => {
                Made::Clip(pipeline.generate_async(request, cancel, on_event).await?)
            }
            Task::Candidates(request, n) => Made::Ranked(
                pipeline
                    .generate_candidates_async(request, *n, scorer()?, cancel, on_event)
                    .await?,
            ),
            Task::Edit(edit) => Made::Clip(pipeline.edit_async(edit, cancel, on_event).await?),
            Task::Vary(variation) => Made::Clip(
                pipeline
                    .vary_async(variation, scorer()?, cancel, on_event)
                    .await?
                    .output,
            ),
        })
    }
}

impl WorkerState {
    /// The context of the device setting `device`. A context other than the last one's drops
    /// what was loaded on that (the next load is on the new one).
    async fn context(&mut self, device: DeviceChoice) -> crate::Result<Context> {
        let shared_type = self.shared.as_ref().map(|c| c.adapter_info().device_type);
        let backend = choose_backend(device, shared_type);
        if let Some((last, ctx)) = &self.ctx
            && last.same_context(backend)
        {
            return Ok(ctx.clone());
        }
        self.ctx = None;
        self.loaded = None;
        self.scorer = None;
        let ctx = match (backend, &self.shared) {
            (Backend::Cpu { .. }, _) => Context::cpu(),
            (Backend::Shared, Some(shared)) => shared.clone(),
            (Backend::Shared | Backend::OwnGpu, _) => {
                Context::with_limits(self.limits.clone()).await?
            }
        };
        self.ctx = Some((backend, ctx.clone()));
        Ok(ctx)
    }
}

/// A model folder of `layout`: from the Hugging Face cache (downloading what it lacks) on the
/// desktop, from the browser's cache (fetching what it lacks) in a page.
async fn resolve(
    model: &str,
    layout: &hub::Layout,
    progress: &mut dyn FnMut(hub::DownloadProgress),
) -> crate::Result<PathBuf> {
    #[cfg(not(target_arch = "wasm32"))]
    return hub::resolve_layout(model, layout, &hub::ResolveOptions::default(), progress);
    #[cfg(target_arch = "wasm32")]
    return hub::web::resolve_layout(model, layout, progress).await;
}

/// What the app says when a run fails: the error, and for a GPU out of memory, how to need less.
pub fn failure_message(e: &crate::Error) -> String {
    if e.is_out_of_gpu_memory() {
        format!(
            "{e}. This clip needs more GPU memory than the GPU has free or allows: tick \"Low \
             GPU memory\" (one network on the GPU at a time), make the clip shorter, or close \
             other programs and browser tabs that use the GPU"
        )
    } else {
        e.to_string()
    }
}
