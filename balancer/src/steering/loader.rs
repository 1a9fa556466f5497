//! Loading the embedded object. `aya-obj` parses it, patches its read-only
//! globals and relocates its map references; the maps are created with
//! aya's `MapData`; the data sections are written and frozen and the
//! program loaded with plain `bpf` calls.
//!
//! Why not aya's `EbpfLoader`: it parses the kernel's whole BTF
//! (`/sys/kernel/btf/vmlinux`, megabytes) before anything else, which this
//! program (no CO-RE relocation) never uses; that was most of the `Ebpf`
//! backend's start-up.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya::maps::MapData;
use aya_obj::{EbpfSectionKind, Object};

use super::SteeringError;
use crate::sys::{self, bpf::ReuseportProgram};

/// A loaded program and the maps it uses, by name.
pub(super) struct Loaded {
    pub(super) program: OwnedFd,
    pub(super) maps: HashMap<String, MapData>,
}

/// Loads `program` from `object`, with each `(global, bytes)` patched into
/// its read-only data first.
pub(super) fn load(
    object: &[u8],
    program: &str,
    globals: &[(&str, &[u8])],
) -> Result<Loaded, SteeringError> {
    let mut obj = Object::parse(object).map_err(|e| SteeringError::Object(e.into()))?;
    let patches = globals
        .iter()
        .map(|&(name, bytes)| (name, (bytes, true)))
        .collect();
    obj.patch_map_data(patches)
        .map_err(|e| SteeringError::Object(e.into()))?;
    let maps = create_maps(&obj)?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let definitions = obj.maps.clone();
    let references = (maps.iter()).map(|(name, data)| {
        (
            name.as_str(),
            data.fd().as_fd().as_raw_fd(),
            &definitions[name],
        )
    });
    obj.relocate_maps(references, &text_sections)
        .map_err(|e| SteeringError::Object(e.into()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| SteeringError::Object(e.into()))?;
    let program = load_program(&obj, program)?;
    Ok(Loaded { program, maps })
}

/// Creates every map of `obj`; a data section's map gets its contents, and
/// a read-only one is frozen.
fn create_maps(obj: &Object) -> Result<HashMap<String, MapData>, SteeringError> {
    let mut maps = HashMap::new();
    for (name, definition) in &obj.maps {
        let data = MapData::create(definition.clone(), name, None).map_err(|source| {
            SteeringError::CreateMap {
                map: name.clone(),
                source: Box::new(source),
            }
        })?;
        let fd = data.fd().as_fd();
        if !definition.data().is_empty() {
            sys::bpf::write_first_entry(fd, definition.data())
                .map_err(|source| data_error(name, source))?;
        }
        if definition.section_kind() == EbpfSectionKind::Rodata {
            sys::bpf::freeze_map(fd).map_err(|source| data_error(name, source))?;
        }
        maps.insert(name.clone(), data);
    }
    Ok(maps)
}

/// Loads the relocated `name` program; the verifier's log on refusal.
fn load_program(obj: &Object, name: &str) -> Result<OwnedFd, SteeringError> {
    let program = obj.programs.get(name).ok_or(SteeringError::NoProgram)?;
    let function = &obj.functions[&program.function_key()];
    // SAFETY: `bpf_insn` is an 8-byte `repr(C)` instruction; the kernel reads
    // the program as an array of them, which is what a u64 view passes on.
    let instructions = unsafe {
        std::slice::from_raw_parts(
            function.instructions.as_ptr().cast::<u64>(),
            function.instructions.len(),
        )
    };
    let license = CString::clone(&program.license);
    let program = ReuseportProgram {
        instructions,
        license: &license,
        name,
    };
    sys::bpf::load_reuseport_program(&program)
        .map_err(|(source, log)| SteeringError::Verifier { source, log })
}

fn data_error(map: &str, source: std::io::Error) -> SteeringError {
    SteeringError::InitMap {
        map: map.to_owned(),
        source,
    }
}
