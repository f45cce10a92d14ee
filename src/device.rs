//! Choosing the compute device and dtype from user strings (`cpu`, `cuda:1`, `metal`, `auto`).

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` or `auto` (the best one compiled in and present).
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            let index = i.parse::<usize>().map_err(|_| {
                Error::invalid(
                    "--device",
                    spec.as_str(),
                    "expected an index after `:` (cuda:0)",
                )
            })?;
            (k.to_string(), index)
        }
        None => (spec.clone(), 0),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid(
                    "--device",
                    spec.as_str(),
                    "this build has no CUDA support; rebuild with `--features cuda`",
                ));
            }
            Ok(Device::new_cuda(index)?)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(Error::invalid(
                    "--device",
                    spec.as_str(),
                    "this build has no Metal support; rebuild with `--features metal` on macOS",
                ));
            }
            Ok(Device::new_metal(index)?)
        }
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        _ => Err(Error::invalid(
            "--device",
            spec.as_str(),
            "expected cpu, cuda[:N], metal[:N] or auto",
        )),
    }
}

/// The entries of a device list (`cuda:0, cuda:1`), unparsed: for showing a plan on a
/// machine that does not have them.
pub fn device_names(spec: &str) -> Vec<&str> {
    spec.split(',').map(str::trim).collect()
}

/// Parses a comma-separated list of devices (`cuda:0,cuda:1`): one data-parallel
/// replica on each. A single device is a list of one.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let parts = device_names(spec);
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid(
            "--device",
            spec,
            "expected one device or a comma-separated list (cuda:0,cuda:1)",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &parts {
        let p = p.to_ascii_lowercase();
        if p != "cpu" && !seen.insert(p.clone()) {
            return Err(Error::invalid(
                "--device",
                spec,
                format!("`{p}` is listed twice; each GPU holds one replica"),
            ));
        }
    }
    parts.into_iter().map(parse_device).collect()
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::invalid(
            "--dtype",
            other,
            "expected f32, f16 or bf16",
        )),
    }
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("auto").is_ok());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda[:N]"), "{err}");
        if !candle_core::utils::cuda_is_available() {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert_eq!(parse_devices("cpu, cpu").unwrap().len(), 2);
        let err = parse_devices("cpu,").unwrap_err().to_string();
        assert!(err.contains("comma-separated"), "{err}");
        let err = parse_devices("cuda:0,cuda:0").unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("int8").is_err());
    }
}
