//! Runs over several machines: node 0 leads, the other nodes train their replicas
//! with it; and the per-device students and teachers every data-parallel run builds.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::distill::replicas::{local_group, node_group, start_message, Group, Replica};
use crate::distill::{build_student, Student, TeacherParts};
use crate::model::{
    build_classifier, BertForSequenceClassification, BuildOptions, Fresh, ModelFiles,
};
use crate::recipe::Recipe;
use crate::run::RunDir;
use crate::train::cluster::{NodeSpec, Rendezvous};
use crate::{Error, Result};
use sha2::Digest;

use super::stages::{augment_task, run_stages};
use super::{lead_run, load_task_data, RunReport};

/// One node of a run over several machines. Node 0 runs the recipe as [`super::run_recipe`]
/// does and returns the report; the others wait for it to reach the training stages,
/// train their replicas with it, and return `None`. The run folder must be on storage
/// every node sees (the other nodes read the fine-tuned teacher, the augmented data and
/// resume checkpoints from it; only node 0 writes).
pub fn run_recipe_on_node(
    recipe: &Recipe,
    recipe_path: Option<&Path>,
    force: bool,
    node: &NodeSpec,
) -> Result<Option<RunReport>> {
    if !recipe.sweep.is_empty() {
        return Err(Error::msg(
            "a sweep runs on one machine (its devices data-parallel); run it without \
             --nnodes, or run each variant as its own multi-node run with --set",
        ));
    }
    recipe.check_streamed_replicas(recipe.device.specs().len() * node.nnodes)?;
    let devices = recipe.device.open()?;
    let identity = format!(
        "{:x}",
        sha2::Sha256::digest(
            format!(
                "{}\n{}",
                recipe.output_dir(recipe_path).display(),
                recipe.resolved_toml()?
            )
            .as_bytes()
        )
    );
    let rendezvous = Rendezvous::join(node, devices.len(), &identity)?;
    if node.node_rank == 0 {
        lead_run(
            recipe,
            recipe_path,
            force,
            &devices,
            Some((node, rendezvous)),
        )
        .map(Some)
    } else {
        follow_run(recipe, recipe_path, node, rendezvous, &devices).map(|()| None)
    }
}

/// The group of the run's replicas when this process leads: this machine's devices
/// alone, or every node's once the others have joined `cluster`.
pub(super) fn lead_group(
    devices: &[Device],
    cluster: Option<(&NodeSpec, Rendezvous)>,
    teacher_spec: &str,
) -> Result<Group> {
    match cluster {
        None => local_group(devices),
        Some((node, mut rendezvous)) => {
            let start = start_message(devices, teacher_spec)?;
            rendezvous.start(&start)?;
            node_group(devices, node, rendezvous, &start)
        }
    }
}

/// One student per device, all with the same initial weights (same source and seed).
pub(super) fn local_students(
    recipe: &Recipe,
    parts: &TeacherParts,
    labels: &[String],
    devices: &[Device],
) -> Result<Vec<Student>> {
    devices
        .iter()
        .map(|d| build_student(&recipe.student, parts, labels, recipe.seed, d))
        .collect()
}

/// The teacher on each device.
pub(super) fn local_teachers(
    recipe: &Recipe,
    spec: &str,
    config: &crate::model::BertConfig,
    tensors: &HashMap<String, Tensor>,
    devices: &[Device],
) -> Result<Vec<BertForSequenceClassification>> {
    let dtype = recipe.teacher.dtype.dtype();
    // A head no stage uses may be missing (a pre-trained encoder for general
    // distillation): it is drawn from the seed, said in the load report, never used.
    let fresh = if recipe.uses_teacher_head() {
        Fresh::Nothing
    } else {
        Fresh::TaskAdditions { seed: recipe.seed }
    };
    devices
        .iter()
        .map(|d| {
            Ok(build_classifier(
                spec,
                config,
                tensors.clone(),
                &BuildOptions {
                    dtype,
                    fresh,
                    ..BuildOptions::inference(d)
                },
            )?
            .model)
        })
        .collect()
}

/// Replica `i`: student `i`, teacher `i` (when there are teachers), device `i`, and
/// the group's handle `i`.
pub(super) fn replicas<'a>(
    students: &'a [Student],
    teachers: Option<&'a [BertForSequenceClassification]>,
    devices: &[Device],
    group: &'a Group,
) -> Vec<Replica<'a>> {
    students
        .iter()
        .enumerate()
        .zip(devices)
        .zip(group.handles())
        .map(|(((i, student), device), parallel)| Replica {
            student,
            teacher: teachers.and_then(|t| t.get(i)),
            device: device.clone(),
            parallel,
        })
        .collect()
}

/// A node other than node 0: the same data, teacher and students, trained with node
/// 0's replicas; nothing written to the shared run folder.
fn follow_run(
    recipe: &Recipe,
    recipe_path: Option<&Path>,
    node: &NodeSpec,
    mut rendezvous: Rendezvous,
    devices: &[Device],
) -> Result<()> {
    tracing::info!(
        "node {}: waiting for node 0 to start training",
        node.node_rank
    );
    let start = rendezvous.wait_start()?;
    let run = RunDir::attach(&recipe.output_dir(recipe_path), &recipe.resolved_toml()?)?;
    let mut data = load_task_data(recipe)?;
    let files = ModelFiles::resolve(&start.teacher)?;
    let config = files.read_config()?;
    let tokenizer = files.read_tokenizer()?;
    let tensors = files.read_weights()?;
    // Node 0 finished the augmentation: this reads its output.
    augment_task(recipe, &run, &mut data, &devices[0])?;
    let parts = TeacherParts {
        config: &config,
        tensors: &tensors,
        tokenizer: &tokenizer,
    };
    let students = local_students(recipe, &parts, &data.labels(), devices)?;
    let teachers = local_teachers(recipe, &start.teacher, &config, &tensors, devices)?;
    let group = node_group(devices, node, rendezvous, &start)?;
    let replicas = replicas(&students, Some(&teachers), devices, &group);
    run_stages(
        &run,
        &recipe.stages,
        true,
        recipe,
        &replicas,
        None,
        &data,
        None,
    )?;
    tracing::info!("node {}: training finished", node.node_rank);
    Ok(())
}
