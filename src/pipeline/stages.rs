//! The training stages of a run: their data (the task's, a file's, or the run's
//! augmented rows), teacher logits, and every replica training them at once.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::data::corpus::{Corpus, CorpusSettings, ExampleLines, Form};
use crate::data::{Dataset, Label, Split};
use crate::distill::cache::{cache_key, cached_logits, model_logits};
use crate::distill::losses::LossWeights;
use crate::distill::replicas::{on_every_replica, Replica};
use crate::distill::trainer::StageRows;
use crate::distill::{Evaluator, Stage, StageKind, StageSummary, Trainer};
use crate::recipe::{Recipe, StageData, StageSpec};
use crate::run::RunDir;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

use super::TaskData;
use crate::data::EncodedDataset;

/// Where a run's teacher logits are cached: the folder and the teacher's identity.
/// Nodes other than node 0 pass none and compute their own.
#[derive(Debug, Clone, Copy)]
pub struct LogitCache<'a> {
    pub dir: &'a Path,
    pub identity: &'a str,
}

/// Runs the stages of `specs`, resuming from the run folder's checkpoint: on every
/// replica at once when there are several (data-parallel), else on the one. The last
/// of `specs` is the run's final stage (best checkpoint, patience) when
/// `ends_the_run`.
#[allow(clippy::too_many_arguments)]
pub fn run_stages(
    run: &RunDir,
    specs: &[StageSpec],
    ends_the_run: bool,
    recipe: &Recipe,
    replicas: &[Replica],
    logit_cache: Option<LogitCache>,
    data: &TaskData,
    evaluator: Option<&dyn Evaluator>,
) -> Result<Vec<StageSummary>> {
    let first = replicas
        .first()
        .ok_or_else(|| Error::msg("no replica to train"))?;
    let saved = crate::distill::checkpoint::saved_progress(run)?;
    let mut finished = FinishedStages::read(run)?;
    let mut summaries = Vec::new();
    let mut restored = false;
    for (index, spec) in specs.iter().enumerate() {
        let name = spec.display_name(index);
        if let Some(p) = &saved {
            if p.stage > index || (p.stage == index && p.finished) {
                tracing::info!("stage {name}: already finished, skipping");
                summaries.extend(finished.get(index));
                continue;
            }
        }
        let resume = saved.clone().filter(|p| p.stage == index);
        if saved.is_some() && resume.is_none() && !restored {
            // A previous stage finished before the interruption: continue from its weights.
            for r in replicas {
                trainer_for(r, run, evaluator).restore_student()?;
            }
        }
        restored = true;
        let rows = StageInput::load(spec, data, &first.student.tokenizer, recipe.seed, index)?;
        let losses = spec.losses();
        let teacher_logits = match &rows {
            StageInput::Encoded(e) => teacher_logits(first, &losses, e, logit_cache, data)?,
            StageInput::Corpus(_) => None,
        };
        let is_final = ends_the_run && index + 1 == specs.len();
        let settings = spec.settings(recipe, is_final);
        let stage = Stage {
            index,
            name: &name,
            kind: spec.kind,
            losses,
            layer_map: &spec.layer_map,
            settings: &settings,
            data: rows.as_rows(),
            teacher_logits: teacher_logits.as_ref(),
            keep_best: is_final,
            seed: recipe.seed,
        };
        tracing::info!(
            "stage {name}: {}, {} epochs{}",
            rows.describe(),
            settings.epochs,
            match replicas.len() {
                1 => String::new(),
                n => format!(", {n} local replicas"),
            }
        );
        let summary = on_every_replica(replicas, |r| {
            trainer_for(r, run, evaluator).run_stage(&stage, resume.clone())
        })?;
        if first.is_leader() {
            finished.record(run, index, &summary)?;
        }
        summaries.push(summary);
    }
    Ok(summaries)
}

/// A stage's rows as loaded: tokenised in memory, or a corpus to stream.
enum StageInput {
    Encoded(EncodedDataset),
    Corpus(Box<Corpus>),
}

impl StageInput {
    fn load(
        spec: &StageSpec,
        data: &TaskData,
        tokenizer: &TextTokenizer,
        seed: u64,
        index: usize,
    ) -> Result<Self> {
        let (files, form, shuffle_buffer, token_cache) = match &spec.data {
            StageData::Corpus {
                files,
                text_field,
                shuffle_buffer,
                token_cache,
            } => {
                let form = Form::Segments {
                    text_field: text_field.clone(),
                };
                (files.clone(), form, *shuffle_buffer, token_cache.as_deref())
            }
            data_spec if data_spec.is_streamed() => {
                let (files, lines) = streamed_files(data_spec, data)?;
                (files, Form::Examples(lines), STREAMED_SHUFFLE_BUFFER, None)
            }
            _ => return Ok(StageInput::Encoded(stage_examples(spec, data, tokenizer)?)),
        };
        let settings = CorpusSettings {
            files: &files,
            form,
            shuffle_buffer,
            seed: crate::rng::mix64(seed ^ (index as u64 + 1)),
            max_seq_len: data.max_seq_len,
            token_cache,
        };
        Ok(StageInput::Corpus(Box::new(Corpus::open(
            &settings, tokenizer,
        )?)))
    }

    fn as_rows(&self) -> StageRows<'_> {
        match self {
            StageInput::Encoded(e) => StageRows::Encoded(e),
            StageInput::Corpus(c) => StageRows::Corpus(c),
        }
    }

    fn describe(&self) -> String {
        match self {
            StageInput::Encoded(e) => format!("{} examples", e.len()),
            StageInput::Corpus(c) => format!("a corpus of {} shards, streamed", c.files().len()),
        }
    }
}

/// Rows held by the shuffle buffer of a streamed `unlabeled` or `augmented` file.
const STREAMED_SHUFFLE_BUFFER: usize = 10_000;

/// The files of a streamed `unlabeled` or `augmented` stage, and how their lines read.
fn streamed_files(spec: &StageData, data: &TaskData) -> Result<(Vec<String>, ExampleLines)> {
    let one = |p: &Path| vec![p.display().to_string()];
    Ok(match spec {
        StageData::Unlabeled { path, .. } => (one(path), ExampleLines::Text),
        StageData::Augmented {
            path: Some(path), ..
        } if is_jsonl(path) => (one(path), ExampleLines::Augmented),
        StageData::Augmented {
            path: Some(path), ..
        } => (one(path), ExampleLines::Text),
        StageData::Augmented { path: None, .. } if !data.augmented_files.is_empty() => {
            let files = data.augmented_files.iter();
            let files = files.map(|p| p.display().to_string()).collect();
            (files, ExampleLines::Augmented)
        }
        _ => {
            return Err(Error::msg(
                "a stage streams the run's augmented data, but no augmentation ran",
            ))
        }
    })
}

/// The summaries of the stages that finished in this run folder, by stage index, kept
/// in `stages.json` so that a run resumed after them still reports them.
struct FinishedStages(Vec<Option<StageSummary>>);

impl FinishedStages {
    const FILE: &'static str = "stages.json";

    fn read(run: &RunDir) -> Result<Self> {
        let path = run.path(Self::FILE);
        Ok(FinishedStages(if path.is_file() {
            crate::io::read_json(&path)?
        } else {
            Vec::new()
        }))
    }

    fn get(&self, index: usize) -> Option<StageSummary> {
        self.0.get(index).cloned().flatten()
    }

    fn record(&mut self, run: &RunDir, index: usize, summary: &StageSummary) -> Result<()> {
        if self.0.len() <= index {
            self.0.resize(index + 1, None);
        }
        self.0[index] = Some(summary.clone());
        crate::io::write_json(&run.path(Self::FILE), &self.0)
    }
}

/// The teacher's logits on a stage's examples when its losses need them, from the
/// run's cache when there is one.
fn teacher_logits(
    first: &Replica,
    losses: &LossWeights,
    examples: &EncodedDataset,
    logit_cache: Option<LogitCache>,
    data: &TaskData,
) -> Result<Option<Tensor>> {
    let teacher = match first.teacher {
        Some(t) if losses.needs_teacher_logits() => t,
        _ => return Ok(None),
    };
    let enc = examples.encoded();
    let compute = || {
        let batch = crate::recipe::EVAL_BATCH_SIZE;
        model_logits(teacher, examples, batch, &first.device)
    };
    Ok(Some(match logit_cache {
        Some(cache) => {
            let key = cache_key(
                cache.identity,
                &enc,
                &format!("logits max_len={}", data.max_seq_len),
            );
            cached_logits(cache.dir, &key, compute)?
        }
        None => compute()?,
    }))
}

/// The trainer of one replica; only the leader gets the evaluator.
fn trainer_for<'a>(
    r: &Replica<'a>,
    run: &'a RunDir,
    evaluator: Option<&'a dyn Evaluator>,
) -> Trainer<'a> {
    Trainer {
        teacher: r.teacher,
        student: r.student,
        evaluator: evaluator.filter(|_| r.is_leader()),
        run,
        device: r.device.clone(),
        interrupt_after: None,
        parallel: r.parallel,
    }
}

/// The rows a stage trains on, before encoding: the run's own data borrowed, files read.
pub fn stage_dataset<'a>(spec: &StageSpec, data: &'a TaskData) -> Result<Cow<'a, Dataset>> {
    Ok(match &spec.data {
        StageData::Train => Cow::Borrowed(&data.train),
        StageData::Corpus { .. } | StageData::Unlabeled { stream: true, .. } | StageData::Augmented { stream: true, .. } => {
            return Err(Error::msg(
                "streamed data is not read whole (its row count is unknown ahead)",
            ))
        }
        StageData::Unlabeled { path, .. } => {
            Cow::Owned(crate::data::load_unlabeled(path, &Default::default())?)
        }
        StageData::Augmented {
            path: Some(path), ..
        } if is_jsonl(path) => {
            Cow::Owned(augmented_dataset(std::slice::from_ref(path))?)
        }
        StageData::Augmented {
            path: Some(path), ..
        } => {
            Cow::Owned(crate::data::load_unlabeled(path, &Default::default())?)
        }
        StageData::Augmented { path: None, .. } => Cow::Borrowed(data.augmented.as_ref().ok_or_else(|| {
            Error::msg(
                "a stage trains on the run's augmented data, but no augmentation ran (the recipe needs an [augment] table)",
            )
        })?),
    })
}

fn is_jsonl(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

/// Augmented files as unlabeled rows (the teacher labels them), each text pair once.
fn augmented_dataset(paths: &[PathBuf]) -> Result<Dataset> {
    let rows = crate::augment::job::read_augmented_files(paths)?;
    Ok(Dataset {
        task: None,
        split: Split::Train,
        label_names: Vec::new(),
        regression: false,
        examples: rows
            .into_iter()
            .enumerate()
            .map(|(idx, r)| crate::data::Example {
                idx,
                text_a: r.text_a,
                text_b: r.text_b,
                label: Label::Unlabeled,
            })
            .collect(),
        origin: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        skipped: 0,
    })
}

/// Augments the task's training text with the recipe's `[augment]` settings into
/// `<run>/augmented/` (cached by content: a resumed run reuses or continues it).
pub fn augment_task(
    recipe: &Recipe,
    run: &RunDir,
    data: &mut TaskData,
    device: &Device,
) -> Result<()> {
    let Some(settings) = &recipe.augment else {
        return Ok(());
    };
    if !recipe.needs_augmentation() {
        tracing::warn!("the recipe has an [augment] table but no stage uses data = {{ source = \"augmented\" }}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = data.train.examples.iter().map(|e| e.texts()).collect();
    let ctx = crate::augment::job::JobContext {
        task: recipe.task.name.name(),
        out_dir: &run.path("augmented"),
        seed: recipe.seed,
        device,
        show_progress: true,
    };
    let mut files = Vec::new();
    for job in crate::augment::job::augment_cached(&rows, settings, &ctx)? {
        let o = &job.outcome;
        tracing::info!(
            "augmentation {}: {} rows from {} ({}){}",
            job.method.as_str(),
            o.manifest.output_rows,
            o.manifest.input_rows,
            o.path.display(),
            if o.reused { ", reused" } else { "" }
        );
        files.push(o.path.clone());
    }
    // Held in memory only for the stages that do not stream it.
    let in_memory = (recipe.stages.iter()).any(|s| {
        matches!(
            s.data,
            StageData::Augmented {
                path: None,
                stream: false
            }
        )
    });
    if in_memory {
        data.augmented = Some(augmented_dataset(&files)?);
    }
    data.augmented_files = files;
    Ok(())
}

fn stage_examples(
    spec: &StageSpec,
    data: &TaskData,
    tokenizer: &TextTokenizer,
) -> Result<EncodedDataset> {
    let dataset = stage_dataset(spec, data)?;
    let examples = EncodedDataset::new(&dataset, tokenizer, data.max_seq_len)?;
    if !(spec.kind == StageKind::Finetune || spec.losses().needs_labels()) {
        // Distillation stages learn from the teacher alone.
        return Ok(examples.without_labels());
    }
    if examples.has_unlabeled() {
        return Err(Error::msg(format!(
            "stage `{}` trains on gold labels but {} has unlabeled rows",
            spec.display_name(0),
            dataset.origin
        )));
    }
    Ok(examples)
}
