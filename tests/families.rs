//! Every encoder family against transformers: tiny random checkpoints that
//! tests/scripts/family_fixtures.py wrote with transformers (committed under
//! tests/fixtures/families), run on one padded batch, every hidden state, every
//! layer's attention probabilities and the logits compared.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, D};
use candle_distill::export::{export_classifier, ExportOptions, ExportSource};
use candle_distill::model::bert::cross_entropy;
use candle_distill::model::{
    build_classifier, BertConfig, BertForSequenceClassification, BertInput, BuildOptions, Built,
    Family, ModelFiles, Outputs,
};
use candle_distill::rng::Rng;
use candle_distill::testing::{
    max_abs_diff, tiny_family_config, write_random_classifier, write_tiny_student,
};

use super::common::reference::vec;
use super::common::tiny_run::{cli, recipe, write_sst2};
use super::common::{mpnet_dir, read_json, rel_err, repo_root, succeed};
use super::model_gradients::{assert_all_trained, assert_first_token_path_matches};

const TOL: f32 = 1e-4;

const FAMILIES: [(&str, Family); 5] = [
    ("roberta", Family::Roberta),
    ("xlm-roberta", Family::XlmRoberta),
    ("electra", Family::Electra),
    ("distilbert", Family::DistilBert),
    ("mpnet", Family::MPNet),
];

fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures/families").join(name)
}

/// A fixture's config, its tensors under canonical names, and transformers' batch and
/// outputs (`reference.safetensors`).
struct Fixture {
    config: BertConfig,
    tensors: HashMap<String, Tensor>,
    reference: HashMap<String, Tensor>,
}

fn load_fixture(name: &str) -> Fixture {
    let dir = fixture(name);
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    Fixture {
        config: files.read_config().unwrap(),
        tensors: files.read_weights().unwrap(),
        reference: candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap(),
    }
}

/// A fixture's model built with `options`, transformers' reference batch and outputs,
/// and the number of tensors in its checkpoint.
fn build_fixture(
    name: &str,
    options: &BuildOptions,
) -> (
    Built<BertForSequenceClassification>,
    HashMap<String, Tensor>,
    usize,
) {
    let Fixture {
        config,
        tensors,
        reference,
    } = load_fixture(name);
    let count = tensors.len();
    let built = build_classifier(name, &config, tensors, options).unwrap();
    (built, reference, count)
}

/// The reference batch; families that ignore token types get ones in row 0 anyway,
/// which must change nothing.
fn batch(reference: &HashMap<String, Tensor>, family: Family) -> BertInput {
    let u32s = |name: &str| reference[name].to_dtype(DType::U32).unwrap();
    let token_type_ids = if family.has_token_types() {
        u32s("token_type_ids")
    } else {
        let (b, s) = reference["input_ids"].dims2().unwrap();
        let mut types = vec![0u32; b * s];
        types[..s].fill(1);
        Tensor::from_vec(types, (b, s), &Device::Cpu).unwrap()
    };
    BertInput {
        input_ids: u32s("input_ids"),
        token_type_ids,
        attention_mask: u32s("attention_mask"),
    }
}

/// The tiny recipe's student section (tests/common/tiny_run.rs).
const TINY_STUDENT: &str =
    "from = \"random\"\nlayers = 2\nhidden = 16\nheads = 4\nintermediate = 32";

/// The tiny recipe in `dir` with `student` as its student section, written beside it.
fn tiny_recipe_with_student(dir: &std::path::Path, student: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(recipe(dir)).unwrap();
    assert!(text.contains(TINY_STUDENT), "the tiny recipe changed");
    let recipe_path = dir.join("family.toml");
    std::fs::write(&recipe_path, text.replace(TINY_STUDENT, student)).unwrap();
    recipe_path
}

/// `plan`, then `run`, of the tiny recipe in `dir` (teacher in `dir/teacher`, GLUE
/// data in `dir/glue`) with `student` as its student section; the plan's text and the
/// run's report.
fn plan_and_run_tiny_recipe(dir: &std::path::Path, student: &str) -> (String, serde_json::Value) {
    let recipe_path = tiny_recipe_with_student(dir, student);
    let plan = succeed(cli().arg("plan").arg(&recipe_path), "plan");
    succeed(
        cli()
            .arg("run")
            .arg(&recipe_path)
            .arg("--out")
            .arg(dir.join("run")),
        "run",
    );
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    (plan, read_json(&dir.join("run/report.json")))
}

#[test]
fn every_family_matches_transformers_with_padding() {
    for (name, family) in FAMILIES {
        let (built, reference, _) = build_fixture(name, &BuildOptions::inference(&Device::Cpu));
        assert_eq!(built.model.config().family(), family, "{name}");
        // Every tensor of the checkpoint is used; none is made up.
        assert!(
            built.report.created.is_empty(),
            "{name}: {:?}",
            built.report.created
        );
        assert!(
            built.report.unused.is_empty(),
            "{name}: {:?}",
            built.report.unused
        );
        let out = built
            .model
            .forward(&batch(&reference, family), Outputs::ALL, None)
            .unwrap();

        let hidden = Tensor::stack(&out.encoder.hidden_states, 0).unwrap();
        let e_hidden = rel_err(&vec(&hidden), &vec(&reference["hidden_states"]));
        assert!(
            e_hidden < TOL,
            "{name}: hidden states, relative error {e_hidden}"
        );
        let scores = Tensor::stack(&out.encoder.attention_scores, 0).unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let e_attention = rel_err(&vec(&probs), &vec(&reference["attentions"]));
        assert!(
            e_attention < TOL,
            "{name}: attention, relative error {e_attention}"
        );
        let e_logits = rel_err(&vec(&out.logits), &vec(&reference["logits"]));
        assert!(e_logits < TOL, "{name}: logits, relative error {e_logits}");
        // `logits` runs the last layer for the first token alone.
        let first_only = built.model.logits(&batch(&reference, family)).unwrap();
        let e_first = rel_err(&vec(&first_only), &vec(&out.logits));
        assert!(
            e_first < 1e-5,
            "{name}: first-token logits, relative error {e_first}"
        );
        eprintln!(
            "{name}: relative errors against transformers: hidden states {e_hidden:.1e}, \
             attention {e_attention:.1e}, logits {e_logits:.1e}"
        );
    }
}

#[test]
fn every_family_trains_every_tensor() {
    // The classification loss and the distillation outputs (every hidden state and
    // attention score) reach every tensor of each family, dropout on.
    for (name, family) in FAMILIES {
        let options = BuildOptions::training(&Device::Cpu, 1);
        let (built, reference, count) = build_fixture(name, &options);
        let mut rng = Rng::new(3);
        let out = built
            .model
            .forward(&batch(&reference, family), Outputs::ALL, Some(&mut rng))
            .unwrap();
        let labels = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
        let mut loss = cross_entropy(&out.logits, &labels).unwrap();
        for t in out
            .encoder
            .hidden_states
            .iter()
            .chain(&out.encoder.attention_scores)
        {
            loss = (loss + t.sqr().unwrap().mean_all().unwrap()).unwrap();
        }
        assert_all_trained(built.varmap.as_ref().unwrap(), &loss, count);
    }
}

#[test]
fn every_familys_first_token_path_gives_the_full_passs_gradients() {
    // Fine-tuning and prediction stages train through the first-token path.
    for (name, family) in FAMILIES {
        let (built, reference, _) = build_fixture(name, &BuildOptions::training(&Device::Cpu, 1));
        let labels = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
        assert_first_token_path_matches(&built, &batch(&reference, family), &labels);
    }
}

#[test]
fn every_family_exports_in_its_own_layout() {
    // transformers wrote each fixture with save_pretrained: an export with the same
    // tensor names, shapes and architecture loads there with no missing or unexpected
    // keys, and its logits on the reference batch are transformers' logits.
    for (name, family) in FAMILIES {
        let dir = fixture(name);
        let out = tempfile::tempdir().unwrap();
        let exported = out.path().join("export");
        let source = ExportSource::from_checkpoint(dir.to_str().unwrap()).unwrap();
        export_classifier(&source, &exported, &ExportOptions::default()).unwrap();

        let shapes = |file: &std::path::Path| -> BTreeMap<String, Vec<usize>> {
            candle_core::safetensors::load(file, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.dims().to_vec()))
                .collect()
        };
        assert_eq!(
            shapes(&exported.join("model.safetensors")),
            shapes(&dir.join("model.safetensors")),
            "{name}: tensor names and shapes"
        );
        let config = read_json(&exported.join("config.json"));
        let theirs = read_json(&dir.join("config.json"));
        assert_eq!(config["model_type"], family.model_type(), "{name}");
        assert_eq!(config["architectures"][0], family.classifier_architecture());
        for key in theirs.as_object().unwrap().keys() {
            assert!(
                config.get(key).is_some(),
                "{name}: config.json lacks `{key}`"
            );
        }

        let files = ModelFiles::resolve(exported.to_str().unwrap()).unwrap();
        let built = build_classifier(
            name,
            &files.read_config().unwrap(),
            files.read_weights().unwrap(),
            &BuildOptions::inference(&Device::Cpu),
        )
        .unwrap();
        let reference = load_fixture(name).reference;
        let logits = built.model.logits(&batch(&reference, family)).unwrap();
        let e = rel_err(&vec(&logits), &vec(&reference["logits"]));
        assert!(e < TOL, "{name}: exported logits, relative error {e}");
    }
}

#[test]
fn every_familys_export_is_the_folder_transformers_loaded() {
    // tests/scripts/check_family_exports.py loaded each fixture's export in transformers
    // (AutoModelForSequenceClassification, AutoTokenizer) and recorded what it was
    // shown: the export today must be that folder (the same tensors, dtypes and shapes,
    // the same config.json), and transformers must have loaded it with no missing,
    // unexpected or mismatched keys and transformers' own logits.
    for (name, family) in FAMILIES {
        let record = read_json(&fixture(name).join("transformers_load.json"));
        let out = tempfile::tempdir().unwrap();
        let exported = out.path().join("export");
        // The command line, as the script's usage runs it.
        let export = cli()
            .args(["export", "--from"])
            .arg(fixture(name))
            .arg("--out")
            .arg(&exported)
            .output()
            .unwrap();
        assert!(export.status.success(), "{name}: {export:?}");

        let file = std::fs::read(exported.join("model.safetensors")).unwrap();
        let header = safetensors::SafeTensors::deserialize(&file).unwrap();
        let mut ours: Vec<serde_json::Value> = header
            .tensors()
            .into_iter()
            .map(|(n, view)| serde_json::json!([n, format!("{:?}", view.dtype()), view.shape()]))
            .collect();
        ours.sort_by_key(|v| v[0].as_str().unwrap().to_string());
        assert_eq!(
            serde_json::Value::Array(ours),
            record["tensors"],
            "{name}: the export's tensors are not what transformers loaded; rerun the script"
        );
        assert_eq!(
            read_json(&exported.join("config.json")),
            record["config"],
            "{name}: the export's config.json is not what transformers loaded; rerun the script"
        );
        assert_eq!(record["model_class"], family.classifier_architecture());
        assert_eq!(record["loading_problems"], serde_json::json!({}), "{name}");
        let error = record["logits_rel_error"].as_f64().unwrap();
        assert!(error < 1e-4, "{name}: transformers' logits off by {error}");
    }
}

#[test]
fn a_run_distils_a_teacher_of_every_family_into_students_of_its_family() {
    // Teacher fine-tuning, intermediate and prediction stages and the export, for a
    // tiny teacher of each family written in its own layout; the student is made of
    // the teacher's second layer, or random and narrower, and exported in the same
    // family's layout.
    let students = ["from = \"teacher_layers\"\nlayers = [2]", TINY_STUDENT];
    for ((name, family), student) in FAMILIES.into_iter().flat_map(|f| students.map(|s| (f, s))) {
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher");
        write_random_classifier(&teacher, &tiny_family_config(family, 32, 2, 4, 64), 1).unwrap();
        write_sst2(&dir.path().join("glue"));
        let (plan, report) = plan_and_run_tiny_recipe(dir.path(), student);
        let shown = format!("| {}, 2 layers x 32", family.model_type());
        assert!(plan.contains(&shown), "{name}: {plan}");
        let teacher_acc = report["teacher"]["dev"]["accuracy"].as_f64().unwrap();
        let student_acc = report["student"]["dev"]["accuracy"].as_f64().unwrap();
        assert!(
            teacher_acc > 0.8,
            "{name}: teacher dev accuracy {teacher_acc}"
        );
        assert!(
            student_acc > 0.7,
            "{name}: student dev accuracy {student_acc}"
        );
        let out = dir.path().join("run");
        let config = read_json(&out.join("student/config.json"));
        assert_eq!(config["model_type"], family.model_type(), "{name}");
        assert_eq!(config["architectures"][0], family.classifier_architecture());
        let tensors =
            candle_core::safetensors::load(out.join("student/model.safetensors"), &Device::Cpu)
                .unwrap();
        let names: Vec<&String> = tensors.keys().collect();
        let words = family.checkpoint_name("bert.embeddings.word_embeddings.weight");
        assert!(tensors.contains_key(&words), "{name}: {names:?}");
        if family == Family::Electra {
            // transformers reads a missing embedding_size as 128: it must be written.
            let width = tensors[&words].dim(1).unwrap();
            assert_eq!(config["embedding_size"], width, "{name}");
        }
        // The family's tokenizer class for the tiny WordPiece vocabulary.
        let tokenizer_class = match family {
            Family::DistilBert => "DistilBertTokenizer",
            Family::Electra => "ElectraTokenizer",
            _ => "BertTokenizer",
        };
        let tokenizer_config = read_json(&out.join("student/tokenizer_config.json"));
        assert_eq!(
            tokenizer_config["tokenizer_class"], tokenizer_class,
            "{name}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("bert.")),
            "{name}: {names:?}"
        );
        let kind = student.lines().next().unwrap_or_default();
        eprintln!("{name}, student {kind}: teacher {teacher_acc:.3}, student {student_acc:.3}");
    }
}

#[test]
fn random_distilberts_get_transformers_sinusoidal_positions_and_keep_them() {
    // With sinusoidal_pos_embds a random DistilBERT's position table is the one
    // transformers computes (tests/scripts/sinusoidal_reference.py), not random
    // numbers; and no stage trains it: the teacher (32 wide) after its fine-tuning and
    // the random student (16 wide) after both distillation stages, AdamW's weight decay
    // included, still hold transformers' tables.
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_family_config(Family::DistilBert, 32, 2, 4, 64);
    config
        .extra
        .insert("sinusoidal_pos_embds".into(), true.into());
    write_random_classifier(&dir.path().join("teacher"), &config, 1).unwrap();
    write_sst2(&dir.path().join("glue"));
    let recipe_path = tiny_recipe_with_student(dir.path(), TINY_STUDENT);
    let run = dir.path().join("run");
    // Fixed positions of magnitude 1 beside word vectors 0.02 wide: this tiny teacher
    // learns little, and the test is about the table, not accuracy.
    succeed(
        cli()
            .arg("run")
            .arg(&recipe_path)
            .args(["--set", "teacher.allow_weak_teacher=true", "--out"])
            .arg(&run),
        "run",
    );

    let reference = candle_core::safetensors::load(
        repo_root().join("tests/fixtures/distilbert_sinusoidal.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let table = |model: &std::path::Path| {
        let tensors =
            candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
        tensors["distilbert.embeddings.position_embeddings.weight"].clone()
    };
    for (model, width) in [
        (dir.path().join("teacher"), 32),
        (run.join("teacher-finetune/checkpoints/best"), 32),
        (run.join("student"), 16),
    ] {
        let want = &reference[&format!("width_{width}")];
        let diff = max_abs_diff(&table(&model), want);
        assert!(
            diff < 1e-6,
            "{}: position table off by {diff}",
            model.display()
        );
    }
}

#[test]
fn runs_take_byte_level_bpe_and_unigram_tokenizers_with_pad_id_1() {
    // The other family tests use the tiny WordPiece vocabulary (pad id 0). Here the
    // teacher carries the RoBERTa fixture's byte-level BPE or XLM-R's Unigram tokenizer
    // and pad id 1, where positions start at 2: fine-tuning, both stages and the export
    // run on ids from those tokenizers.
    for (name, family) in [
        ("roberta", Family::Roberta),
        ("xlm-roberta", Family::XlmRoberta),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher");
        let theirs = read_json(&fixture(name).join("config.json"));
        let mut config = tiny_family_config(family, 32, 2, 4, 64);
        config.vocab_size = theirs["vocab_size"].as_u64().unwrap() as usize;
        config.pad_token_id = 1;
        write_random_classifier(&teacher, &config, 1).unwrap();
        for file in ["vocab.txt", "tokenizer.json", "tokenizer_config.json"] {
            let _ = std::fs::remove_file(teacher.join(file));
        }
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture(name).join(file), teacher.join(file)).unwrap();
        }
        write_sst2(&dir.path().join("glue"));
        let (_, report) = plan_and_run_tiny_recipe(dir.path(), TINY_STUDENT);
        let teacher_acc = report["teacher"]["dev"]["accuracy"].as_f64().unwrap();
        let student_acc = report["student"]["dev"]["accuracy"].as_f64().unwrap();
        assert!(teacher_acc > 0.8, "{name}: teacher {teacher_acc}");
        assert!(student_acc > 0.7, "{name}: student {student_acc}");
        let exported = dir.path().join("run/student");
        let config = read_json(&exported.join("config.json"));
        assert_eq!(config["pad_token_id"], 1, "{name}");
        let tokenizer = read_json(&exported.join("tokenizer.json"));
        let original = read_json(&fixture(name).join("tokenizer.json"));
        assert_eq!(
            tokenizer["model"]["type"], original["model"]["type"],
            "{name}"
        );
        eprintln!("{name}: teacher {teacher_acc:.3}, student {student_acc:.3}");
    }
}

#[test]
fn a_bert_student_learns_from_a_distilbert_teacher_with_the_same_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny student is 32 wide with a projection to 48: the teacher's width.
    let family = Family::DistilBert;
    write_random_classifier(
        &dir.path().join("teacher"),
        &tiny_family_config(family, 48, 2, 4, 64),
        1,
    )
    .unwrap();
    write_tiny_student(&dir.path().join("bert-student"), 4).unwrap();
    write_sst2(&dir.path().join("glue"));
    let student = format!(
        "from = \"checkpoint\"\nmodel = \"{}\"",
        dir.path().join("bert-student").display()
    );
    let (plan, report) = plan_and_run_tiny_recipe(dir.path(), &student);
    assert!(plan.contains("| distilbert, 2 layers x 48"), "{plan}");
    assert!(plan.contains("| bert, 2 layers x 32"), "{plan}");
    let student_acc = report["student"]["dev"]["accuracy"].as_f64().unwrap();
    assert!(student_acc > 0.7, "student dev accuracy {student_acc}");
    let config = read_json(&dir.path().join("run/student/config.json"));
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
}

#[test]
fn a_student_checkpoint_with_another_vocabulary_is_refused() {
    // The RoBERTa fixture's byte-level BPE vocabulary against a teacher with the tiny
    // WordPiece one: `plan` and `run` both stop before any work, naming the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_family_config(Family::DistilBert, 32, 2, 4, 64);
    write_random_classifier(&dir.path().join("teacher"), &teacher, 1).unwrap();
    write_sst2(&dir.path().join("glue"));
    let student = fixture("roberta");
    let recipe_path = tiny_recipe_with_student(
        dir.path(),
        &format!("from = \"checkpoint\"\nmodel = \"{}\"", student.display()),
    );
    let run = dir.path().join("run");
    for command in ["plan", "run"] {
        let mut line = cli();
        line.arg(command).arg(&recipe_path);
        if command == "run" {
            line.arg("--out").arg(&run);
        }
        let out = line.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("has a different vocabulary from the teacher"),
            "{command}: {stderr}"
        );
        let named = format!("`{}`", student.display());
        assert_eq!(stderr.matches(&named).count(), 1, "{command}: {stderr}");
        // Not even the run folder: the teacher's fine-tuning would be the first work.
        assert!(!run.exists(), "{command} did work first");
    }
}

#[test]
fn real_mpnet_matches_transformers() {
    // all-mpnet-base-v2 (110M parameters) against transformers' outputs on 12 real
    // GLUE inputs (tests/scripts/mpnet_reference.py).
    let Some(dir) = mpnet_dir() else { return };
    let root = repo_root().join("tests/fixtures");
    let reference =
        candle_core::safetensors::load(root.join("mpnet_reference.safetensors"), &Device::Cpu)
            .unwrap();
    let meta = read_json(&root.join("mpnet_reference.json"));
    let texts: Vec<Vec<String>> = serde_json::from_value(meta["texts"].clone()).unwrap();
    let stride = meta["hidden_stride"].as_u64().unwrap() as usize;
    let head = meta["head"].as_u64().unwrap() as usize;

    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let config = files.read_config().unwrap();
    assert_eq!(config.family(), Family::MPNet);
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = reference["attention_mask"].to_dtype(DType::U32).unwrap();
    let tokenizer = files.read_tokenizer().unwrap();
    let (id_rows, mask_rows): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
        (ids.to_vec2().unwrap(), mask.to_vec2().unwrap());
    for (i, text) in texts.iter().enumerate() {
        let enc = tokenizer
            .encode(&text[0], text.get(1).map(String::as_str), 512)
            .unwrap();
        let n = mask_rows[i].iter().sum::<u32>() as usize;
        assert_eq!(enc.ids, id_rows[i][..n], "tokenisation of {text:?}");
    }

    let options = BuildOptions {
        // No task head in the checkpoint: one is made, and not compared.
        fresh: candle_distill::model::Fresh::TaskAdditions { seed: 0 },
        ..BuildOptions::inference(&Device::Cpu)
    };
    let built =
        build_classifier("mpnet", &config, files.read_weights().unwrap(), &options).unwrap();
    assert!(
        built
            .report
            .created
            .iter()
            .all(|n| n.starts_with("classifier.")),
        "{:?}",
        built.report.created
    );
    let input = BertInput {
        input_ids: ids.clone(),
        token_type_ids: ids.zeros_like().unwrap(),
        attention_mask: mask,
    };
    let out = built.model.forward(&input, Outputs::ALL, None).unwrap();
    let hidden = Tensor::stack(&out.encoder.hidden_states, 0).unwrap();
    let dims: Vec<u32> = (0..hidden.dim(3).unwrap())
        .step_by(stride)
        .map(|d| d as u32)
        .collect();
    let sub = hidden
        .index_select(&Tensor::new(dims.as_slice(), &Device::Cpu).unwrap(), 3)
        .unwrap();
    // Layer by layer (the embeddings and 12 layers; 12 attention maps), so that a
    // small early layer cannot hide behind the larger later ones.
    let per_layer = |ours: &Tensor, theirs: &str| -> f32 {
        (0..ours.dim(0).unwrap())
            .map(|l| {
                let (a, b) = (ours.get(l).unwrap(), reference[theirs].get(l).unwrap());
                let e = rel_err(&vec(&a), &vec(&b));
                assert!(e < TOL, "{theirs}, layer {l}: relative error {e}");
                e
            })
            .fold(0f32, f32::max)
    };
    let mut worst = 0f32;
    for (ours, theirs) in [
        (sub, "hidden_sub"),
        (hidden.sum(3).unwrap(), "hidden_sum"),
        (hidden.sqr().unwrap().sum(3).unwrap(), "hidden_sumsq"),
    ] {
        worst = worst.max(per_layer(&ours, theirs));
    }
    let scores = Tensor::stack(&out.encoder.attention_scores, 0).unwrap();
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)
        .unwrap()
        .narrow(2, head, 1)
        .unwrap()
        .squeeze(2)
        .unwrap();
    let e = per_layer(&probs, "attention_head");
    eprintln!(
        "all-mpnet-base-v2: hidden states within {worst:.1e}, attention within {e:.1e} of \
         transformers, in every layer"
    );
}

#[test]
fn inspect_and_bench_take_every_family() {
    for (name, family) in FAMILIES {
        let dir = fixture(name);
        let o = succeed(cli().args(["inspect", "--json"]).arg(&dir), name);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["model_type"], family.model_type(), "{name}");
        let config = ModelFiles::resolve(dir.to_str().unwrap())
            .unwrap()
            .read_config()
            .unwrap();
        // The fixtures hold the whole classifier: what inspect counts in the files is
        // what the configs count.
        assert_eq!(
            report["parameters"].as_u64().unwrap() as usize,
            config.encoder_parameters() + config.head_parameters(),
            "{name}"
        );
        let line = [
            "bench",
            "--json",
            "--seq-len",
            "8",
            "--batch",
            "2",
            "--iters",
            "1",
        ];
        let o = succeed(
            cli()
                .args(line)
                .args(["--warmup", "0", "--model"])
                .arg(&dir),
            name,
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["results"].as_array().unwrap().len(), 1, "{name}");
        assert_eq!(report["models"][0]["layers"], 2, "{name}");
    }
}

#[test]
fn distilberts_sinusoidal_positions_stay_frozen() {
    // With sinusoidal_pos_embds the position table is fixed, as in transformers: it is
    // loaded and written, but gets no gradient; everything else still trains.
    let Fixture {
        mut config,
        tensors,
        reference,
    } = load_fixture("distilbert");
    config
        .extra
        .insert("sinusoidal_pos_embds".into(), true.into());
    let frozen = "bert.embeddings.position_embeddings.weight";
    assert_eq!(config.frozen_tensors(), [frozen]);
    let built = build_classifier(
        "distilbert",
        &config,
        tensors,
        &BuildOptions::training(&Device::Cpu, 1),
    )
    .unwrap();
    let out = built
        .model
        .forward(&batch(&reference, Family::DistilBert), Outputs::ALL, None)
        .unwrap();
    let labels = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let grads = cross_entropy(&out.logits, &labels)
        .unwrap()
        .backward()
        .unwrap();
    let varmap = built.varmap.unwrap();
    let vars = varmap.data().lock().unwrap();
    assert!(grads.get(vars[frozen].as_tensor()).is_none());
    let word = &vars["bert.embeddings.word_embeddings.weight"];
    assert!(grads.get(word.as_tensor()).is_some());
}

#[test]
fn bpe_and_unigram_tokenizers_give_transformers_ids() {
    // RoBERTa's byte-level BPE and XLM-R's SentencePiece-style Unigram, as
    // transformers saved them, on sentences and pairs (<s> A </s></s> B </s>).
    for name in ["roberta", "xlm-roberta"] {
        let dir = fixture(name);
        let reference = read_json(&dir.join("tokenization.json"));
        let texts: Vec<Vec<String>> = serde_json::from_value(reference["texts"].clone()).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
        let tokenizer = ModelFiles::resolve(dir.to_str().unwrap())
            .unwrap()
            .read_tokenizer()
            .unwrap();
        assert_eq!(tokenizer.pad_id(), 1, "{name}: <pad>");
        for (text, want) in texts.iter().zip(&ids) {
            let got = tokenizer
                .encode(&text[0], text.get(1).map(String::as_str), 512)
                .unwrap();
            assert_eq!(&got.ids, want, "{name}: {text:?}");
        }
    }
}

#[test]
fn finetune_and_eval_take_every_family() {
    // `finetune` writes a folder of the family's layout that `eval` scores.
    for (name, family) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher");
        write_random_classifier(&teacher, &tiny_family_config(family, 32, 2, 4, 64), 1).unwrap();
        write_sst2(&dir.path().join("glue"));
        let out = dir.path().join("finetuned");
        succeed(
            cli()
                .arg("finetune")
                .arg("--model")
                .arg(&teacher)
                .args(["--task", "sst2", "--data"])
                .arg(dir.path().join("glue"))
                .arg("--out")
                .arg(&out)
                .args(["--epochs", "2", "--lr", "3e-3", "--batch-size", "16"]),
            name,
        );
        assert_eq!(
            read_json(&out.join("config.json"))["model_type"],
            family.model_type()
        );
        let o = succeed(
            cli()
                .arg("eval")
                .arg("--model")
                .arg(&out)
                .args(["--task", "sst2", "--data"])
                .arg(dir.path().join("glue")),
            name,
        );
        let eval: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let accuracy = eval["results"]["dev"]["metrics"]["accuracy"]
            .as_f64()
            .unwrap();
        assert!(accuracy > 0.8, "{name}: dev accuracy {accuracy}");
    }
}

#[test]
fn an_mpnet_with_its_real_tokenizer_exports_a_fast_tokenizer() {
    // MPNet's WordPiece vocabulary holds [CLS] and [SEP] as well as <s> and </s>; its
    // files name <s> A </s></s> B </s>, which only tokenizer.json reproduces.
    let Some(real) = mpnet_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let mut config = tiny_family_config(Family::MPNet, 32, 1, 4, 64);
    config.vocab_size = 30527;
    config.pad_token_id = 1;
    config.set_labels(&["negative".into(), "positive".into()]);
    write_random_classifier(&model, &config, 2).unwrap();
    std::fs::remove_file(model.join("vocab.txt")).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(real.join(f), model.join(f)).unwrap();
    }
    let out = dir.path().join("export");
    let source = ExportSource::from_checkpoint(model.to_str().unwrap()).unwrap();
    let report = export_classifier(&source, &out, &ExportOptions::default()).unwrap();
    assert!(
        !report.files.iter().any(|f| f == "vocab.txt"),
        "{:?}",
        report.files
    );
    let tokenizer_config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tokenizer_config["tokenizer_class"], "MPNetTokenizer");
    assert_eq!(tokenizer_config["cls_token"], "<s>");
    assert_eq!(tokenizer_config["unk_token"], "[UNK]");
}
