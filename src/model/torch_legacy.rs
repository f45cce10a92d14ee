//! PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, which candle does not read.
//!
//! Many checkpoints on the hub predate torch 1.6 (2020) and are stored this way. The file is
//! a sequence of pickles followed by raw storages:
//!
//! 1. a magic number (`0x1950a86a20f9469cfc6c`), 2. the protocol version (1001),
//! 3. `sys_info` (byte order, type sizes), 4. the state dict, whose tensors refer to
//!    storages through persistent ids `('storage', torch.XStorage, key, location, numel, view)`,
//! 5. the list of storage keys in file order, 6. per key: the element count as a
//!    little-endian `i64`, then the elements.
//!
//! The pickles are parsed with candle's unpickler; only the framing is done here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// `\x80\x02` (protocol 2), `\x8a\x0a` (LONG1, 10 bytes), the magic number, `.` (STOP).
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];
const PROTOCOL_VERSION: i32 = 1001;

/// True when the file starts with the legacy format's magic number.
pub fn is_legacy(path: &Path) -> Result<bool> {
    let mut head = [0u8; MAGIC_PICKLE.len()];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(file.read_exact(&mut head).is_ok() && head == MAGIC_PICKLE)
}

/// Reads every tensor of a legacy-format state dict, in its stored dtype, on the CPU.
// Long on purpose: the file's records in their stored order (pickle, storage keys,
// then each storage's bytes); each step needs the ones before it.
pub fn read_legacy(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(file);
    let bad = |message: String| Error::Weights {
        path: path.display().to_string(),
        name: "*".into(),
        message,
    };

    let mut magic = [0u8; MAGIC_PICKLE.len()];
    r.read_exact(&mut magic)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if magic != MAGIC_PICKLE {
        return Err(bad(
            "not a PyTorch checkpoint: neither a zip archive nor the legacy magic number".into(),
        ));
    }
    match unpickle(&mut r, path, "protocol version")? {
        Object::Int(PROTOCOL_VERSION) => {}
        other => {
            return Err(bad(format!(
                "unsupported legacy protocol version {other:?} (expected {PROTOCOL_VERSION})"
            )))
        }
    }
    let sys_info = unpickle(&mut r, path, "sys_info")?;
    if let Object::Dict(entries) = &sys_info {
        let big_endian = entries.iter().any(|(k, v)| {
            *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false)
        });
        if big_endian {
            return Err(bad("saved on a big-endian machine; not supported".into()));
        }
    }
    let state = unpickle(&mut r, path, "state dict")?;
    let keys = match unpickle(&mut r, path, "storage keys")? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| k.unicode().map_err(|o| bad(format!("storage key {o:?}"))))
            .collect::<Result<Vec<_>>>()?,
        other => return Err(bad(format!("expected the storage key list, got {other:?}"))),
    };

    let Object::Dict(entries) = state else {
        return Err(bad(
            "the pickle is not a state dict (a mapping of names to tensors); \
             save `model.state_dict()` rather than the model"
                .into(),
        ));
    };
    let mut element_sizes = HashMap::new();
    for (_, value) in &entries {
        collect_storages(value, &mut element_sizes);
    }

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let mut count = [0u8; 8];
        r.read_exact(&mut count)
            .map_err(|e| bad(format!("storage {key}: truncated file ({e})")))?;
        let count = i64::from_le_bytes(count);
        let size = element_sizes.get(&key).copied().ok_or_else(|| {
            bad(format!(
                "storage {key}: of a type this reader does not know (or not referenced)"
            ))
        })?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .ok_or_else(|| bad(format!("storage {key}: invalid element count {count}")))?;
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes)
            .map_err(|e| bad(format!("storage {key}: truncated file ({e})")))?;
        storages.insert(key, bytes);
    }

    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let label = match &name {
            Object::Unicode(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let info = match value.into_tensor_info(name, Path::new("")) {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            // A buffer of a dtype candle lacks (bool, int32): not a BERT parameter.
            Err(e) => {
                tracing::warn!("{}: skipping `{label}`: {e}", path.display());
                continue;
            }
        };
        let key = info.path.trim_start_matches('/');
        let storage = storages.get(key).ok_or_else(|| Error::Weights {
            path: path.display().to_string(),
            name: info.name.clone(),
            message: format!("refers to storage {key}, which the file does not hold"),
        })?;
        out.push((
            info.name.clone(),
            tensor_from_storage(&info, storage, path)?,
        ));
    }
    Ok(out)
}

fn unpickle<R: BufRead>(r: &mut R, path: &Path, what: &str) -> Result<Object> {
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .and_then(|()| stack.finalize())
        .map_err(|e| Error::Weights {
            path: path.display().to_string(),
            name: "*".into(),
            message: format!("cannot read the {what} pickle: {e}"),
        })
}

/// Element size of every storage a persistent id in `obj` refers to.
fn collect_storages(obj: &Object, out: &mut HashMap<String, usize>) {
    match obj {
        Object::PersistentLoad(id) => {
            if let Object::Tuple(parts) = id.as_ref() {
                if let [Object::Unicode(tag), Object::Class { class_name, .. }, Object::Unicode(key), ..] =
                    parts.as_slice()
                {
                    if tag == "storage" {
                        if let Some(size) = storage_element_size(class_name) {
                            out.insert(key.clone(), size);
                        }
                    }
                }
            }
        }
        Object::Tuple(items) | Object::List(items) => {
            items.iter().for_each(|o| collect_storages(o, out))
        }
        Object::Dict(items) => items.iter().for_each(|(k, v)| {
            collect_storages(k, out);
            collect_storages(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out);
        }
        _ => {}
    }
}

fn storage_element_size(class_name: &str) -> Option<usize> {
    Some(match class_name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

fn tensor_from_storage(
    info: &candle_core::pickle::TensorInfo,
    storage: &[u8],
    path: &Path,
) -> Result<Tensor> {
    let err = |message: String| Error::Weights {
        path: path.display().to_string(),
        name: info.name.clone(),
        message,
    };
    let layout = &info.layout;
    let dims = layout.dims().to_vec();
    let elem = info.dtype.size_in_bytes();
    // candle's TensorInfo carries the storage offset in bytes.
    let start = layout.start_offset();
    let end = start + layout.shape().elem_count() * elem;
    let bytes = storage.get(start..end).ok_or_else(|| {
        err(format!(
            "bytes {start}..{end} lie outside its storage of {} bytes",
            storage.len()
        ))
    })?;
    if layout.is_contiguous() {
        return Ok(Tensor::from_raw_buffer(
            bytes,
            info.dtype,
            &dims,
            &Device::Cpu,
        )?);
    }
    if layout.is_fortran_contiguous() {
        // A transposed view: read the reversed shape, then permute back.
        let reversed: Vec<usize> = dims.iter().rev().copied().collect();
        let order: Vec<usize> = (0..dims.len()).rev().collect();
        let t = Tensor::from_raw_buffer(bytes, info.dtype, &reversed, &Device::Cpu)?;
        return Ok(t.permute(order)?.contiguous()?);
    }
    Err(err(format!(
        "stored as a strided view (shape {dims:?}, strides {:?}); re-save it with \
         `tensor.contiguous()` or as safetensors",
        layout.stride()
    )))
}
