//! The model card (README.md) of an exported student: YAML front matter as the
//! Hugging Face hub reads it, then what the student is, how it scores against its
//! teacher, how much smaller and faster it is, and how it was made.

use serde::{Deserialize, Serialize};

/// What the card says beyond what export knows itself. Every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelCard {
    /// Title of the card; the output folder's name when absent.
    pub model_name: Option<String>,
    /// Hub id or path of the teacher (`base_model` in the front matter when a hub id).
    pub teacher: Option<String>,
    /// The run fine-tuned that teacher on the task before distilling from it.
    #[serde(default)]
    pub teacher_finetuned: bool,
    pub dataset: Option<DatasetInfo>,
    /// The recipe that produced the student (TOML or any text), shown verbatim.
    pub recipe: Option<String>,
    /// Dev-set scores, student and (when known) teacher.
    pub metrics: Vec<MetricRow>,
    pub teacher_size: Option<TeacherSize>,
    pub speed: Option<SpeedComparison>,
    pub license: Option<String>,
    pub language: Option<String>,
}

/// `org/name` (or `org/name@revision`) that is not a local folder.
fn is_hub_id(spec: &str) -> bool {
    matches!(
        crate::hub::Location::parse(spec, crate::hub::RepoKind::Model),
        Ok(crate::hub::Location::Hub { .. })
    )
}

/// A link to the teacher's hub page, or its path as it was given.
fn teacher_reference(spec: &str) -> String {
    if is_hub_id(spec) {
        let repo = spec.split_once('@').map_or(spec, |(r, _)| r);
        format!("[`{spec}`](https://huggingface.co/{repo})")
    } else {
        format!("`{spec}`")
    }
}

/// The task data, as the hub's `model-index` names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Hub dataset id, e.g. `nyu-mll/glue`.
    pub id: String,
    /// Dataset config, e.g. `sst2`.
    pub config: Option<String>,
    /// Split the metrics were computed on, e.g. `validation`.
    pub split: Option<String>,
    /// Human-readable name, e.g. `GLUE SST-2`.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRow {
    /// Metric id as the hub knows it (`accuracy`, `f1`, `matthews_correlation`, `pearsonr`...).
    pub name: String,
    pub student: f64,
    pub teacher: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherSize {
    pub parameters: usize,
    pub size_on_disk_bytes: u64,
}

/// Latency of student and teacher measured the same way (e.g. by `candle-distill bench`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedComparison {
    /// How it was measured: device, batch, sequence length.
    pub setting: String,
    pub student_ms: f64,
    pub teacher_ms: f64,
}

/// Facts about the exported student that export itself measures.
pub(crate) struct StudentFacts<'a> {
    pub name: &'a str,
    pub parameters: usize,
    pub size_on_disk_bytes: u64,
    pub layers: usize,
    pub hidden_size: usize,
    pub labels: &'a [String],
    pub regression: bool,
    pub dtype: &'a str,
}

/// A YAML scalar: JSON string syntax is valid YAML double-quoted syntax.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn millions(n: usize) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}

impl ModelCard {
    fn front_matter(&self, student: &StudentFacts) -> String {
        let mut y =
            String::from("---\nlibrary_name: transformers\npipeline_tag: text-classification\n");
        if let Some(license) = &self.license {
            y += &format!("license: {}\n", quoted(license));
        }
        if let Some(language) = &self.language {
            y += &format!("language:\n- {}\n", quoted(language));
        }
        y += "tags:\n- bert\n- text-classification\n- distillation\n- tinybert\n- candle-distill\n";
        if let Some(teacher) = self.teacher.as_deref().filter(|t| is_hub_id(t)) {
            y += &format!("base_model: {}\n", quoted(teacher));
        }
        if let Some(dataset) = &self.dataset {
            y += &format!("datasets:\n- {}\n", quoted(&dataset.id));
        }
        if !self.metrics.is_empty() {
            y += "metrics:\n";
            for m in &self.metrics {
                y += &format!("- {}\n", quoted(&m.name));
            }
        }
        if let (Some(dataset), false) = (&self.dataset, self.metrics.is_empty()) {
            let task_name = if student.regression {
                "Text Regression"
            } else {
                "Text Classification"
            };
            y += &format!(
                "model-index:\n- name: {}\n  results:\n  - task:\n      type: text-classification\n      name: {}\n    dataset:\n      name: {}\n      type: {}\n",
                quoted(student.name),
                quoted(task_name),
                quoted(dataset.name.as_deref().unwrap_or(&dataset.id)),
                quoted(&dataset.id)
            );
            if let Some(config) = &dataset.config {
                y += &format!("      config: {}\n", quoted(config));
            }
            if let Some(split) = &dataset.split {
                y += &format!("      split: {}\n", quoted(split));
            }
            y += "    metrics:\n";
            for m in &self.metrics {
                y += &format!(
                    "    - type: {}\n      value: {}\n",
                    quoted(&m.name),
                    yaml_number(m.student)
                );
            }
        }
        y + "---\n"
    }

    /// The whole README.md.
    // Long on purpose: the card's sections in the order a reader meets them, each a
    // few lines of text; split, the order would be spread over several functions.
    pub(crate) fn render(&self, student: &StudentFacts) -> String {
        let mut md = self.front_matter(student);
        let title = self.model_name.as_deref().unwrap_or(student.name);
        md += &format!("\n# {title}\n\n");
        md += &format!(
            "A {}-layer, {}-wide BERT ({} parameters, {} weights) for {}",
            student.layers,
            student.hidden_size,
            millions(student.parameters),
            student.dtype,
            if student.regression {
                "regression".to_string()
            } else {
                format!("{}-way text classification", student.labels.len())
            },
        );
        match &self.teacher {
            Some(t) => {
                md += &format!(", distilled from {}", teacher_reference(t));
                if self.teacher_finetuned {
                    md += " (fine-tuned on the task first)";
                }
                md += " ";
            }
            None => md += ", distilled ",
        }
        md += "with candle-distill (TinyBERT: layer-mapped hidden-state and attention losses, then soft-logit losses).\n";
        if let Some(d) = &self.dataset {
            md += &format!(
                "\nTrained on `{}`{}.\n",
                d.id,
                d.config
                    .as_ref()
                    .map(|c| format!(" (config `{c}`)"))
                    .unwrap_or_default()
            );
        }

        if !student.regression && !student.labels.is_empty() {
            md += "\n## Labels\n\n| id | label |\n|---:|---|\n";
            for (i, l) in student.labels.iter().enumerate() {
                md += &format!("| {i} | {l} |\n");
            }
        }

        if !self.metrics.is_empty() {
            let split = self
                .dataset
                .as_ref()
                .and_then(|d| d.split.clone())
                .unwrap_or_else(|| "dev".into());
            md += &format!(
                "\n## Results ({split})\n\n| metric | student | teacher | student / teacher |\n|---|---:|---:|---:|\n"
            );
            for m in &self.metrics {
                let (teacher, ratio) = match m.teacher {
                    Some(t) if t != 0.0 => {
                        (format!("{t:.4}"), format!("{:.1}%", 100.0 * m.student / t))
                    }
                    Some(t) => (format!("{t:.4}"), "-".into()),
                    None => ("-".into(), "-".into()),
                };
                md += &format!("| {} | {:.4} | {teacher} | {ratio} |\n", m.name, m.student);
            }
        }

        md += "\n## Size and speed\n\n| | student | teacher | student / teacher |\n|---|---:|---:|---:|\n";
        let teacher = self.teacher_size.as_ref();
        md += &format!(
            "| parameters | {} | {} | {} |\n",
            millions(student.parameters),
            teacher
                .map(|t| millions(t.parameters))
                .unwrap_or("-".into()),
            teacher
                .map(|t| format!(
                    "{:.1}%",
                    100.0 * student.parameters as f64 / t.parameters as f64
                ))
                .unwrap_or("-".into())
        );
        md += &format!(
            "| weights on disk | {} | {} | {} |\n",
            mib(student.size_on_disk_bytes),
            teacher
                .filter(|t| t.size_on_disk_bytes > 0)
                .map(|t| mib(t.size_on_disk_bytes))
                .unwrap_or("-".into()),
            teacher
                .filter(|t| t.size_on_disk_bytes > 0)
                .map(|t| format!(
                    "{:.1}%",
                    100.0 * student.size_on_disk_bytes as f64 / t.size_on_disk_bytes as f64
                ))
                .unwrap_or("-".into())
        );
        if let Some(s) = &self.speed {
            md += &format!(
                "| latency ({}) | {:.2} ms | {:.2} ms | {:.2}x faster |\n",
                s.setting,
                s.student_ms,
                s.teacher_ms,
                s.teacher_ms / s.student_ms
            );
        }

        md += "\n## Usage\n\n```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n";
        md += "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n";
        md +=
            "model = AutoModelForSequenceClassification.from_pretrained(\"path/to/this/folder\")\n";
        md += "logits = model(**tokenizer([\"a sentence\"], return_tensors=\"pt\")).logits\n```\n";

        if let Some(recipe) = &self.recipe {
            md += "\n## Recipe\n\n```\n";
            md += recipe.trim_end();
            md += "\n```\n";
        }
        md += &format!(
            "\nExported by candle-distill {}; its logits were checked against the trained model before writing.\n",
            env!("CARGO_PKG_VERSION")
        );
        md
    }
}

fn yaml_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        ".nan".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(labels: &[String]) -> StudentFacts<'_> {
        StudentFacts {
            name: "sst2-student",
            parameters: 14_350_000,
            size_on_disk_bytes: 57_400_000,
            layers: 4,
            hidden_size: 312,
            labels,
            regression: false,
            dtype: "float32",
        }
    }

    #[test]
    fn card_has_front_matter_and_tables() {
        let labels = vec!["negative".to_string(), "positive".to_string()];
        let card = ModelCard {
            teacher: Some("org/bert-base-sst2".into()),
            dataset: Some(DatasetInfo {
                id: "nyu-mll/glue".into(),
                config: Some("sst2".into()),
                split: Some("validation".into()),
                name: Some("GLUE SST-2".into()),
            }),
            recipe: Some("[task]\nname = \"sst2\"\n".into()),
            metrics: vec![MetricRow {
                name: "accuracy".into(),
                student: 0.9,
                teacher: Some(0.925),
            }],
            teacher_size: Some(TeacherSize {
                parameters: 109_483_778,
                size_on_disk_bytes: 438_000_000,
            }),
            speed: Some(SpeedComparison {
                setting: "cpu, batch 8, seq 128".into(),
                student_ms: 100.0,
                teacher_ms: 940.0,
            }),
            ..Default::default()
        };
        let md = card.render(&facts(&labels));
        let (front, body) = md
            .strip_prefix("---\n")
            .and_then(|s| s.split_once("\n---\n"))
            .expect("front matter");
        for line in [
            "library_name: transformers",
            "base_model: \"org/bert-base-sst2\"",
            "- \"nyu-mll/glue\"",
            "      config: \"sst2\"",
            "      value: 0.9",
        ] {
            assert!(front.contains(line), "missing `{line}` in\n{front}");
        }
        assert!(
            body.contains("| accuracy | 0.9000 | 0.9250 | 97.3% |"),
            "{body}"
        );
        assert!(body.contains("| 1 | positive |"), "{body}");
        assert!(body.contains("9.40x faster"), "{body}");
        assert!(
            body.contains("| parameters | 14.3M | 109.5M | 13.1% |"),
            "{body}"
        );
        assert!(body.contains("name = \"sst2\""), "{body}");
    }

    #[test]
    fn a_local_teacher_is_named_not_linked_and_an_unknown_size_is_a_dash() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().display().to_string();
        let card = ModelCard {
            teacher: Some(teacher.clone()),
            teacher_finetuned: true,
            teacher_size: Some(TeacherSize {
                parameters: 22_700_000,
                size_on_disk_bytes: 0,
            }),
            ..Default::default()
        };
        let md = card.render(&facts(&labels));
        assert!(!md.contains("base_model"), "{md}");
        assert!(!md.contains("huggingface.co/"), "{md}");
        assert!(
            md.contains(&format!(
                "distilled from `{teacher}` (fine-tuned on the task first)"
            )),
            "{md}"
        );
        assert!(md.contains("| weights on disk | "), "{md}");
        assert!(!md.contains("inf%"), "{md}");
        // A hub id with a revision links to the repo page.
        let card = ModelCard {
            teacher: Some("org/bert@v2".into()),
            ..Default::default()
        };
        assert!(card
            .render(&facts(&labels))
            .contains("[`org/bert@v2`](https://huggingface.co/org/bert)"));
    }

    #[test]
    fn empty_card_still_renders_student_facts() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let md = ModelCard::default().render(&facts(&labels));
        assert!(md.starts_with("---\nlibrary_name: transformers\n"));
        assert!(!md.contains("base_model"));
        assert!(!md.contains("model-index"));
        assert!(md.contains("| parameters | 14.3M | - | - |"), "{md}");
    }
}
