//! Building the student: from a checkpoint (General TinyBERT), from a subset of the
//! teacher's layers (DistilBERT-style), or at random with a given shape; plus the
//! learned projections that map its hidden states to the teacher's width.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::model::bert::Linear;
use crate::model::params::{var_builder, Fresh, ParamSource};
use crate::model::{BertConfig, BertForSequenceClassification, ModelFiles};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// Where the student's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum StudentInit {
    /// A pre-trained small BERT, e.g. `huawei-noah/TinyBERT_General_4L_312D`.
    Checkpoint { model: String },
    /// Copies of these teacher layers (1-based), with the teacher's embeddings,
    /// pooler and head.
    TeacherLayers { layers: Vec<usize> },
    /// Fresh weights of the given shape.
    Random {
        layers: usize,
        hidden: usize,
        heads: usize,
        intermediate: usize,
    },
}

/// Whether the student's hidden states pass through learned projections (`fit_denses.j`)
/// before they are compared with the teacher's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    /// When the widths differ, or when the student checkpoint carries trained projections
    /// (the v2 General TinyBERT-6 checkpoints hold `fit_denses.0`-`6` at 768 -> 768).
    #[default]
    Auto,
    /// Always, as the TinyBERT reference does: the checkpoint's, else new ones, at any width.
    Always,
    /// Never: hidden states are compared as they are, so the widths must be equal.
    Never,
}

impl Projection {
    /// Whether to project, given the two widths and whether the student's checkpoint
    /// holds projections (`fit_dense*`).
    pub fn applies(self, student: usize, teacher: usize, checkpoint_has: bool) -> Result<bool> {
        match self {
            Projection::Auto => Ok(student != teacher || checkpoint_has),
            Projection::Always => Ok(true),
            Projection::Never if student == teacher => Ok(false),
            Projection::Never => Err(Error::msg(format!(
                "student.projection = \"never\" compares hidden states as they are, which needs \
                 the student as wide as the teacher ({student} vs {teacher}); use \"auto\""
            ))),
        }
    }
}

/// The recipe's `[student]` table: where the weights come from (`from = …` and its keys)
/// and `projection`.
#[derive(Debug, Clone, PartialEq)]
pub struct StudentSpec {
    pub init: StudentInit,
    pub projection: Projection,
}

impl From<StudentInit> for StudentSpec {
    fn from(init: StudentInit) -> Self {
        StudentSpec {
            init,
            projection: Projection::default(),
        }
    }
}

// `projection` sits beside the tagged `from` keys; serde's `flatten` would lose
// `deny_unknown_fields`, so the table is split by hand.
impl Serialize for StudentSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut table = toml::Table::try_from(&self.init).map_err(S::Error::custom)?;
        if self.projection != Projection::default() {
            let value = toml::Value::try_from(self.projection).map_err(S::Error::custom)?;
            table.insert("projection".into(), value);
        }
        table.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StudentSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let projection = match table.remove("projection") {
            Some(v) => Projection::deserialize(v)
                .map_err(|e| D::Error::custom(format!("student.projection: {}", e.message())))?,
            None => Projection::default(),
        };
        let init = StudentInit::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("student: {}", e.message())))?;
        Ok(StudentSpec { init, projection })
    }
}

/// A student ready to train: the model, its variables, and one projection per
/// hidden state (index 0 = embeddings) when its width differs from the teacher's.
pub struct Student {
    pub model: BertForSequenceClassification,
    pub config: BertConfig,
    pub varmap: VarMap,
    pub projections: Vec<Linear>,
    pub tokenizer: TextTokenizer,
    /// How it was built, for plans and reports.
    pub description: String,
}

impl Student {
    /// The model and projections computing in `dtype` (mixed precision): each weight is
    /// cast from its f32 variable on every call, so the casts are part of the graph and
    /// gradients reach the f32 variables. Cheap: one pass over the weights.
    pub fn cast(&self, dtype: DType) -> Result<(BertForSequenceClassification, Vec<Linear>)> {
        let tensors = self
            .named_tensors()
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let device = tensors
            .values()
            .next()
            .map_or(Device::Cpu, |t| t.device().clone());
        let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, &device);
        let model = BertForSequenceClassification::new(vb.clone(), &self.config)?;
        let projections = self
            .projections
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let (to, from) = p.weight().dims2()?;
                Ok(Linear::new(vb.pp(format!("fit_denses.{j}")), from, to)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((model, projections))
    }

    /// Student parameters without the training-only projections.
    pub fn model_parameters(&self) -> usize {
        self.model_tensors().values().map(Tensor::elem_count).sum()
    }

    /// Every trainable variable by name, projections included.
    pub fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        crate::model::params::named_vars(&self.varmap)
    }

    /// The variables the optimizer updates: every one but those the config freezes
    /// (`BertConfig::frozen_tensors`).
    pub fn trainable_vars(&self) -> Vec<(String, candle_core::Var)> {
        let frozen = self.config.frozen_tensors();
        let mut vars = self.named_vars();
        vars.retain(|(name, _)| !frozen.contains(&name.as_str()));
        vars
    }

    /// Every trained tensor by name, projections included (nothing is copied).
    pub fn named_tensors(&self) -> HashMap<String, Tensor> {
        crate::model::params::named_tensors(&self.varmap)
    }

    /// The tensors of the model a user gets: without the training-only projections.
    pub fn model_tensors(&self) -> HashMap<String, Tensor> {
        let mut tensors = self.named_tensors();
        tensors.retain(|k, _| !k.starts_with("fit_dense"));
        tensors
    }
}

/// Hidden state `j` through projection `j`, or unchanged when there are none (the
/// student is as wide as the teacher).
pub fn project(projections: &[Linear], j: usize, hidden: &Tensor) -> candle_core::Result<Tensor> {
    match projections.get(j) {
        Some(p) => p.forward(hidden),
        None => Ok(hidden.clone()),
    }
}

/// The teacher pieces a student may be built from.
pub struct TeacherParts<'a> {
    pub config: &'a BertConfig,
    pub tensors: &'a HashMap<String, Tensor>,
    pub tokenizer: &'a TextTokenizer,
}

pub fn build_student(
    spec: &StudentSpec,
    teacher: &TeacherParts,
    labels: &[String],
    seed: u64,
    device: &Device,
) -> Result<Student> {
    let init = &spec.init;
    let Start {
        mut config,
        mut tensors,
        tokenizer,
        description,
    } = starting_point(init, teacher)?;
    config.set_labels(labels);
    config.architectures = Some(vec!["BertForSequenceClassification".into()]);
    let teacher_width = teacher.config.hidden_size;
    // Only a student asked for as random may be random; a checkpoint or the teacher's
    // layers must supply every tensor but the head and the projections.
    let (origin, fresh) = match init {
        StudentInit::Checkpoint { model } => (model.clone(), Fresh::TaskAdditions { seed }),
        StudentInit::TeacherLayers { .. } => (
            format!("student ({description})"),
            Fresh::TaskAdditions { seed },
        ),
        StudentInit::Random { .. } => {
            // DistilBERT's sinusoidal positions are computed, not drawn.
            config.add_formula_tensors(&mut tensors)?;
            ("student".to_string(), Fresh::Anything { seed })
        }
    };
    let source = Arc::new(ParamSource::new(&origin, tensors, true, fresh));
    let vb = var_builder(&source, DType::F32, device);
    let model = BertForSequenceClassification::new(vb.clone(), &config)?;
    let has_projections =
        source.contains("fit_dense.weight") || source.contains("fit_denses.0.weight");
    let projections =
        if spec
            .projection
            .applies(config.hidden_size, teacher_width, has_projections)?
        {
            (0..=config.num_hidden_layers)
                .map(|j| projection(&source, &vb, j, config.hidden_size, teacher_width))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
    let report = source.checked_report(config.model_type.as_deref())?;
    if !report.created.is_empty() {
        tracing::info!(
            "student: freshly initialised {} tensors",
            report.created.len()
        );
    }
    let varmap = source
        .varmap()
        .cloned()
        .expect("trainable source has a varmap");
    Ok(Student {
        model,
        config,
        varmap,
        projections,
        tokenizer,
        description,
    })
}

/// Refuses, before any work, a recipe whose student checkpoint has another vocabulary
/// than its teacher's (`plan` and `run` call this first).
pub fn check_student_vocabulary(init: &StudentInit, teacher: &ModelFiles) -> Result<()> {
    let StudentInit::Checkpoint { model } = init else {
        return Ok(());
    };
    let student = ModelFiles::resolve(model)?.read_tokenizer()?;
    check_shared_vocabulary(model, &student, &teacher.read_tokenizer()?)
}

/// Refuses a student checkpoint whose vocabulary is not the teacher's: the losses and
/// the cached teacher outputs line the two models up token by token.
pub fn check_shared_vocabulary(
    model: &str,
    student: &TextTokenizer,
    teacher: &TextTokenizer,
) -> Result<()> {
    if student.vocab_hash() == teacher.vocab_hash() {
        return Ok(());
    }
    Err(Error::msg(format!(
        "the student checkpoint `{model}` has a different vocabulary from the teacher \
         ({} vs {} tokens, sha256 {} vs {}); student and teacher must share one tokenizer",
        student.vocab_size(),
        teacher.vocab_size(),
        &student.vocab_hash()[..12],
        &teacher.vocab_hash()[..12]
    )))
}

/// What a student starts from, before its head and projections: configuration,
/// tensors, tokenizer, and a description for plans and reports.
struct Start {
    config: BertConfig,
    tensors: HashMap<String, Tensor>,
    tokenizer: TextTokenizer,
    description: String,
}

fn starting_point(init: &StudentInit, teacher: &TeacherParts) -> Result<Start> {
    Ok(match init {
        StudentInit::Checkpoint { model } => {
            let files = ModelFiles::resolve(model)?;
            let config = files.read_config()?;
            let tokenizer = files.read_tokenizer()?;
            check_shared_vocabulary(model, &tokenizer, teacher.tokenizer)?;
            let mut tensors = files.read_weights()?;
            // A general checkpoint's head (MLM, NSP) or another task's classifier is not ours.
            tensors.retain(|k, _| !k.starts_with("classifier.") && !k.starts_with("cls."));
            Start {
                config,
                tensors,
                tokenizer,
                description: format!("checkpoint {model}"),
            }
        }
        StudentInit::TeacherLayers { layers } => {
            let n = teacher.config.num_hidden_layers;
            if layers.is_empty() || layers.iter().any(|&l| l == 0 || l > n) {
                return Err(Error::invalid(
                    "student.layers",
                    format!("{layers:?}"),
                    format!("expected teacher layers between 1 and {n}"),
                ));
            }
            let mut config = teacher.config.clone();
            config.num_hidden_layers = layers.len();
            let tensors = subset_layers(teacher.tensors, layers);
            let description = format!("teacher layers {layers:?}");
            Start {
                config,
                tensors,
                tokenizer: teacher.tokenizer.clone(),
                description,
            }
        }
        StudentInit::Random {
            layers,
            hidden,
            heads,
            intermediate,
        } => {
            let config = teacher
                .config
                .reshaped(*layers, *hidden, *heads, *intermediate);
            config.validate("student")?;
            let description = format!(
                "random {layers} layers, hidden {hidden}, {heads} heads, FFN {intermediate}"
            );
            Start {
                config,
                tensors: HashMap::new(),
                tokenizer: teacher.tokenizer.clone(),
                description,
            }
        }
    })
}

/// `fit_denses.j` (TinyBERT v2 checkpoints), else the shared `fit_dense` (v1), else new.
fn projection(
    source: &Arc<ParamSource>,
    vb: &candle_nn::VarBuilder,
    j: usize,
    from: usize,
    to: usize,
) -> Result<Linear> {
    let name = format!("fit_denses.{j}");
    if !source.contains(&format!("{name}.weight")) && source.contains("fit_dense.weight") {
        // Share the v1 projection's values, but as separate variables per layer.
        let w = source.get_pretrained("fit_dense.weight")?;
        let b = source.get_pretrained("fit_dense.bias")?;
        source.insert_pretrained(&format!("{name}.weight"), w);
        source.insert_pretrained(&format!("{name}.bias"), b);
    }
    Ok(Linear::new(vb.pp(&name), from, to)?)
}

/// The teacher's tensors with only `layers` (1-based) kept, renumbered from 0.
pub fn subset_layers(
    tensors: &HashMap<String, Tensor>,
    layers: &[usize],
) -> HashMap<String, Tensor> {
    let prefix = "bert.encoder.layer.";
    let mut out = HashMap::new();
    for (name, t) in tensors {
        match name.strip_prefix(prefix) {
            Some(rest) => {
                let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
                if let Ok(i) = index.parse::<usize>() {
                    if let Some(pos) = layers.iter().position(|&l| l == i + 1) {
                        out.insert(format!("{prefix}{pos}.{tail}"), t.clone());
                    }
                }
            }
            None => {
                out.insert(name.clone(), t.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_config, write_random_classifier, write_tiny_student};

    /// A teacher as wide as `hidden`, with the tiny test tokenizer.
    fn build(
        dir: &std::path::Path,
        teacher_hidden: usize,
        projection: Projection,
    ) -> Result<Student> {
        let teacher = dir.join("teacher");
        write_random_classifier(&teacher, &tiny_config(teacher_hidden, 2, 4, 64), 1)?;
        let files = ModelFiles::resolve(&teacher.display().to_string())?;
        let (config, tensors, tokenizer) = (
            files.read_config()?,
            files.read_weights()?,
            files.read_tokenizer()?,
        );
        let parts = TeacherParts {
            config: &config,
            tensors: &tensors,
            tokenizer: &tokenizer,
        };
        let spec = StudentSpec {
            init: StudentInit::Checkpoint {
                model: dir.join("student").display().to_string(),
            },
            projection,
        };
        build_student(&spec, &parts, &["a".into(), "b".into()], 3, &Device::Cpu)
    }

    fn student_with_projection_of_width(dir: &std::path::Path, to: usize) {
        write_tiny_student(&dir.join("student"), 5).unwrap();
        let path = dir.join("student/model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        tensors.insert(
            "fit_denses.0.weight".into(),
            Tensor::full(0.25f32, (to, 32), &Device::Cpu).unwrap(),
        );
        tensors.insert(
            "fit_denses.0.bias".into(),
            Tensor::full(0.5f32, to, &Device::Cpu).unwrap(),
        );
        crate::model::weights::save_safetensors(&tensors, &path).unwrap();
    }

    #[test]
    fn equal_widths_use_the_checkpoints_trained_projections() {
        let dir = tempfile::tempdir().unwrap();
        student_with_projection_of_width(dir.path(), 32);
        let student = build(dir.path(), 32, Projection::Auto).unwrap();
        assert_eq!(student.projections.len(), 3, "one per hidden state");
        let w: Vec<Vec<f32>> = student.projections[0].weight().to_vec2().unwrap();
        assert!(w.iter().flatten().all(|&v| v == 0.25), "{w:?}");
        let b: Vec<f32> = student.projections[0].bias().unwrap().to_vec1().unwrap();
        assert!(b.iter().all(|&v| v == 0.5));
        let never = build(dir.path(), 32, Projection::Never).unwrap();
        assert!(never.projections.is_empty());
    }

    #[test]
    fn always_projects_at_equal_width_and_never_refuses_unequal_widths() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_student(&dir.path().join("student"), 5).unwrap();
        // The checkpoint's projection is 32 -> 48: at teacher width 32 only `always`
        // projects, and must build 32 -> 32 ones rather than take a wrong-shaped one.
        let path = dir.path().join("student/model.safetensors");
        let files = ModelFiles::resolve(&dir.path().join("student").display().to_string()).unwrap();
        assert!(files.holds_projections().unwrap());
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        tensors.retain(|k, _| !k.starts_with("fit_dense"));
        crate::model::weights::save_safetensors(&tensors, &path).unwrap();
        assert!(!files.holds_projections().unwrap(), "read from the header");
        assert!(build(dir.path(), 32, Projection::Auto)
            .unwrap()
            .projections
            .is_empty());
        let always = build(dir.path(), 32, Projection::Always).unwrap();
        assert_eq!(always.projections.len(), 3);
        assert_eq!(always.projections[1].weight().dims(), &[32, 32]);
        let err = build(dir.path(), 48, Projection::Never)
            .err()
            .expect("unequal widths refused")
            .to_string();
        assert!(
            err.contains("\"never\"") && err.contains("(32 vs 48)"),
            "{err}"
        );
        assert_eq!(
            build(dir.path(), 48, Projection::Auto)
                .unwrap()
                .projections
                .len(),
            3
        );
    }

    #[test]
    fn the_student_table_takes_projection_beside_from() {
        let spec: StudentSpec =
            toml::from_str("from = \"checkpoint\"\nmodel = \"m\"\nprojection = \"always\"")
                .unwrap();
        assert_eq!(spec.projection, Projection::Always);
        assert_eq!(spec.init, StudentInit::Checkpoint { model: "m".into() });
        let text = toml::to_string(&spec).unwrap();
        assert_eq!(toml::from_str::<StudentSpec>(&text).unwrap(), spec);
        let bad = toml::from_str::<StudentSpec>(
            "from = \"checkpoint\"\nmodel = \"m\"\nprojection = \"sometimes\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("student.projection") && bad.contains("sometimes"),
            "{bad}"
        );
        let typo = toml::from_str::<StudentSpec>(
            "from = \"checkpoint\"\nmodel = \"m\"\nprojections = \"always\"",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("projections"), "{typo}");
        let default = toml::to_string(&StudentSpec::from(StudentInit::Checkpoint {
            model: "m".into(),
        }))
        .unwrap();
        assert!(!default.contains("projection"), "{default}");
    }
}
