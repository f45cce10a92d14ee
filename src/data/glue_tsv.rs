//! The GLUE download's TSV files, with their quirks: MRPC's header starts with a BOM,
//! CoLA's train/dev files have no header (and dev no final newline), fields are split on
//! tabs only with quotes as plain text (QUOTE_NONE), sentences carry trailing spaces,
//! RTE/QNLI/MNLI labels are strings and STS-B scores are floats.

use std::path::Path;

use super::dataset::{
    clean_text, parse_class, parse_score, Dataset, Example, Label, LoadOptions, RowErrors,
};
use super::task::{Split, Task};
use crate::{Error, Result};

/// Column names of a task's TSV header: text columns, label column, id column.
fn header_columns(task: Task) -> (&'static [&'static str], &'static str, &'static str) {
    match task {
        Task::Cola | Task::Sst2 => (&["sentence"], "label", "index"),
        Task::Mrpc => (&["#1 String", "#2 String"], "Quality", "index"),
        Task::Qqp => (&["question1", "question2"], "is_duplicate", "id"),
        Task::Stsb => (&["sentence1", "sentence2"], "score", "index"),
        Task::Mnli => (&["sentence1", "sentence2"], "gold_label", "index"),
        Task::Qnli => (&["question", "sentence"], "label", "index"),
        Task::Rte | Task::Wnli => (&["sentence1", "sentence2"], "label", "index"),
    }
}

/// Where the fields of a row are.
struct Columns {
    count: usize,
    label: Option<usize>,
    id: Option<usize>,
}

/// CoLA train/dev: source, label, original mark, sentence; no header.
const COLA_RAW: Columns = Columns {
    count: 4,
    label: Some(1),
    id: None,
};

/// Loads `<dir>/<Task dir>/<split file>`.
pub fn load(dir: &Path, task: Task, split: Split, options: &LoadOptions) -> Result<Dataset> {
    let path = dir
        .join(task.glue_dir_name())
        .join(split.glue_file_name(task));
    load_file(&path, task, split, options)
}

/// Loads one GLUE TSV file of `task`.
pub fn load_file(path: &Path, task: Task, split: Split, options: &LoadOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let origin = path.display().to_string();
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::invalid(&origin, "encoding", format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .peekable();
    // A final newline leaves one empty piece at the end; it is not a row.
    let total = text.split('\n').count();
    let ends_with_newline = text.ends_with('\n');

    let label_names: Vec<String> = task.label_names().iter().map(|s| s.to_string()).collect();
    let first = lines.peek().map(|(_, l)| *l).unwrap_or("");
    let headerless_cola = task == Task::Cola && !first.starts_with("index\t");
    let (columns, text_cols) = if headerless_cola {
        (COLA_RAW, vec![3])
    } else {
        let (_, header) = lines
            .next()
            .ok_or_else(|| Error::invalid(&origin, "header", "the file is empty"))?;
        header_layout(header, task, split, &origin)?
    };

    let data_start = usize::from(!headerless_cola);
    let mut errors = RowErrors::new(options);
    let mut examples = Vec::new();
    for (i, line) in lines {
        if i + 1 == total && ends_with_newline {
            break;
        }
        if options.limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        let at = format!("{origin}:{}", i + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != columns.count {
            errors.bad(
                &at,
                format!(
                    "expected {} tab-separated columns, found {}",
                    columns.count,
                    fields.len()
                ),
            )?;
            continue;
        }
        match parse_row(
            &fields,
            &columns,
            &text_cols,
            task,
            &label_names,
            i - data_start,
        ) {
            Ok(example) => examples.push(example),
            Err(message) => errors.bad(&at, message)?,
        }
    }
    Ok(Dataset {
        task: Some(task),
        split,
        label_names: if task.is_regression() {
            Vec::new()
        } else {
            label_names
        },
        regression: task.is_regression(),
        examples,
        origin,
        skipped: errors.skipped,
    })
}

/// The columns a header names for `task`: their layout, and the text columns.
fn header_layout(
    header: &str,
    task: Task,
    split: Split,
    origin: &str,
) -> Result<(Columns, Vec<usize>)> {
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let find = |name: &str| names.iter().position(|n| *n == name);
    let (text_names, label_name, id_name) = header_columns(task);
    let text = text_names
        .iter()
        .map(|n| {
            find(n).ok_or_else(|| {
                Error::invalid(
                    format!("{origin}:1"),
                    "header",
                    format!("no `{n}` column in [{}]", names.join(", ")),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let label = find(label_name);
    if label.is_none() && !split.is_test() {
        return Err(Error::invalid(
            format!("{origin}:1"),
            "header",
            format!(
                "no `{label_name}` column in [{}]; only test files may be unlabeled",
                names.join(", ")
            ),
        ));
    }
    let columns = Columns {
        count: names.len(),
        label,
        id: find(id_name),
    };
    Ok((columns, text))
}

fn parse_row(
    fields: &[&str],
    columns: &Columns,
    text_cols: &[usize],
    task: Task,
    label_names: &[String],
    row: usize,
) -> std::result::Result<Example, String> {
    let mut texts = text_cols.iter().map(|&c| clean_text(fields[c]));
    let text_a = texts.next().flatten().ok_or("empty text")?;
    let text_b = match texts.next() {
        Some(Some(t)) => Some(t),
        Some(None) => return Err("empty second text".into()),
        None => None,
    };
    let label = match columns.label {
        None => Label::Unlabeled,
        Some(c) if task.is_regression() => Label::Score(parse_score(fields[c])?),
        Some(c) => Label::Class(parse_class(fields[c], label_names)?),
    };
    let idx = match columns.id {
        Some(c) => fields[c]
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("id `{}` is not a non-negative integer", fields[c].trim()))?,
        None => row,
    };
    Ok(Example {
        idx,
        text_a,
        text_b,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, task: Task, file: &str, text: &str) {
        let sub = dir.join(task.glue_dir_name());
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(file), text).unwrap();
    }

    fn skip() -> LoadOptions {
        LoadOptions {
            skip_malformed: true,
            limit: None,
        }
    }

    #[test]
    fn malformed_rows_stop_the_load_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "sentence\tlabel\ngood fun \t1\ntoo\tmany\tcolumns\n \t0\nbad\t7\ndull \t0\n";
        write(dir.path(), Task::Sst2, "train.tsv", text);
        let err = load(
            dir.path(),
            Task::Sst2,
            Split::Train,
            &LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("train.tsv:3"), "{err}");
        assert!(
            err.contains("expected 2 tab-separated columns, found 3"),
            "{err}"
        );
        assert!(err.contains("--skip-malformed"), "{err}");

        let ds = load(dir.path(), Task::Sst2, Split::Train, &skip()).unwrap();
        assert_eq!(
            ds.skipped, 3,
            "wrong column count, empty text, unknown label"
        );
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[1].text_a, "dull");
        assert_eq!(ds.examples[1].label, Label::Class(0));
        assert_eq!(
            ds.examples[1].idx, 4,
            "row number in the file, not among kept rows"
        );
    }

    #[test]
    fn unknown_labels_and_bad_scores_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            Task::Rte,
            "dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n",
        );
        let err = load(dir.path(), Task::Rte, Split::Dev, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dev.tsv:3") && err.contains("`maybe`"),
            "{err}"
        );
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
        write(
            dir.path(),
            Task::Stsb,
            "dev.tsv",
            &format!("{header}0\tg\tf\ty\t0\tn\tn\ta\tb\t3.2\n1\tg\tf\ty\t0\tn\tn\ta\tb\thigh\n"),
        );
        let ds = load(dir.path(), Task::Stsb, Split::Dev, &skip()).unwrap();
        assert_eq!((ds.len(), ds.skipped), (1, 1));
        assert_eq!(ds.examples[0].label, Label::Score(3.2));
    }

    #[test]
    fn mnli_and_qqp_files_in_the_glue_format_load() {
        let dir = tempfile::tempdir().unwrap();
        let dev_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n";
        let row = |i: usize, gold: &str| {
            format!("{i}\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sat.\tA cat sat.\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\n")
        };
        write(
            dir.path(),
            Task::Mnli,
            "dev_matched.tsv",
            &format!(
                "{dev_header}{}{}",
                row(0, "entailment"),
                row(1, "contradiction")
            ),
        );
        write(
            dir.path(),
            Task::Mnli,
            "dev_mismatched.tsv",
            &format!("{dev_header}{}", row(7, "neutral")),
        );
        let test_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\n";
        write(
            dir.path(),
            Task::Mnli,
            "test_mismatched.tsv",
            &format!("{test_header}5\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sat.\tA cat sat.\n"),
        );
        let opts = LoadOptions::default();
        let m = load(dir.path(), Task::Mnli, Split::Dev, &opts).unwrap();
        assert_eq!(m.label_counts(), vec![1, 0, 1]);
        assert_eq!(m.examples[0].text_b.as_deref(), Some("A cat sat."));
        let mm = load(dir.path(), Task::Mnli, Split::DevMismatched, &opts).unwrap();
        assert_eq!((mm.label_counts(), mm.examples[0].idx), (vec![0, 1, 0], 7));
        let test = load(dir.path(), Task::Mnli, Split::TestMismatched, &opts).unwrap();
        assert_eq!(test.examples[0].label, Label::Unlabeled);
        assert_eq!(test.examples[0].idx, 5);

        write(
            dir.path(),
            Task::Qqp,
            "train.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n10\t1\t2\tHow old?\tWhat age?\t1\n11\t3\t4\tWhy?\n12\t5\t6\tWho?\tWhere?\t0\n",
        );
        let err = load(dir.path(), Task::Qqp, Split::Train, &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.tsv:3"), "{err}");
        let qqp = load(dir.path(), Task::Qqp, Split::Train, &skip()).unwrap();
        assert_eq!((qqp.len(), qqp.skipped), (2, 1));
        assert_eq!(qqp.examples[1].idx, 12);
        assert_eq!(qqp.label_counts(), vec![1, 1]);
    }

    #[test]
    fn headerless_cola_and_missing_label_column_in_dev() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            Task::Cola,
            "dev.tsv",
            "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.",
        );
        let ds = load(dir.path(), Task::Cola, Split::Dev, &LoadOptions::default()).unwrap();
        assert_eq!(ds.label_counts(), vec![1, 1]);
        assert_eq!(ds.examples[1].text_a, "Cat the sat.");
        write(
            dir.path(),
            Task::Cola,
            "test.tsv",
            "index\tsentence\n0\tThe cat sat.\n",
        );
        let ds = load(dir.path(), Task::Cola, Split::Test, &LoadOptions::default()).unwrap();
        assert_eq!(ds.examples[0].label, Label::Unlabeled);
        write(
            dir.path(),
            Task::Sst2,
            "dev.tsv",
            "index\tsentence\n0\tfun\n",
        );
        let err = load(dir.path(), Task::Sst2, Split::Dev, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no `label` column"), "{err}");
    }
}
