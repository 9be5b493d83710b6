//! Where in an OpenSSL build the read/write probes go.
//!
//! A uprobe replaces an instruction with a breakpoint; after the BPF program ran, the kernel
//! either emulates the replaced instruction (x86-64: `call`, `jmp`, `jcc`, `nop`, `push`) or
//! single-steps a copy of it, which costs a second trap. In a virtual machine the hypervisor
//! intercepts that debug trap (KVM always does), and on this project's test VMs one
//! single-stepped hit costs about 27 µs against 1.5 µs for an emulated one (see
//! docs/benchmarks.md, `tls-probe`). OpenSSL's `SSL_read` and `SSL_write` begin with
//! `sub $N,%rsp`, which is single-stepped, and a return probe must sit on the function's
//! first instruction.
//!
//! Every OpenSSL from 1.1.1 on implements all four entry points through two internal
//! functions with the `_ex` contract: `ssl_read_internal(s, buf, num, &readbytes)` and
//! `ssl_write_internal(s, buf, num, &written)`, returning > 0 on success. They are not
//! exported, but `SSL_read` and `SSL_read_ex` both call the first (and `SSL_write`,
//! `SSL_write_ex` the second) before any other call on their normal path. This module decodes
//! the start of the four exported functions and, when both callers of each agree on the same
//! target in the executable code, returns the internal functions' file offsets: probing them
//! sees every call of all four entry points once, and their first instruction is typically a
//! `push` (emulated). When the callers do not agree (another compiler's layout, a wrapper, an
//! unexpected build), nothing is returned and the exported functions are probed as before.

use std::collections::HashMap;
use std::path::Path;

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

/// Bytes decoded from the start of an exported function looking for its first call.
const SCAN_BYTES: usize = 96;

/// The internal read and write functions of one OpenSSL build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Internal {
    /// File offset of `ssl_read_internal`.
    pub read: u64,
    /// File offset of `ssl_write_internal`.
    pub write: u64,
    /// Whether the kernel emulates the first instruction of both (no single-step per hit).
    pub emulated: bool,
}

/// Why no internal functions were found (the exported ones are probed instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoInternal {
    /// The file could not be read or parsed as ELF.
    #[error("not a readable ELF file: {reason}")]
    Unreadable {
        /// What failed.
        reason: String,
    },
    /// Not an x86-64 object (other architectures keep the exported probes).
    #[error("not x86-64")]
    Architecture,
    /// One of the four exported functions is missing (e.g. OpenSSL 1.1.0 has no `_ex`).
    #[error("no {symbol}")]
    Missing {
        /// The missing symbol.
        symbol: &'static str,
    },
    /// An exported function's first call could not be found in its first bytes.
    #[error("no call near the start of {symbol}")]
    NoCall {
        /// The function.
        symbol: &'static str,
    },
    /// The two callers of one internal function call different targets, or read and write
    /// call the same one: the layout is not the expected one.
    #[error("{first} and {second} do not call one internal function")]
    Disagree {
        /// One caller.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

/// Finds the internal read/write functions of the OpenSSL in `path` (a libssl or an
/// executable that links it statically).
pub fn internal_functions(path: &Path) -> Result<Internal, NoInternal> {
    let bytes = std::fs::read(path).map_err(|e| NoInternal::Unreadable {
        reason: format!("{}: {e}", path.display()),
    })?;
    internal_functions_in(&bytes)
}

/// [`internal_functions`] of an ELF image in memory.
pub fn internal_functions_in(bytes: &[u8]) -> Result<Internal, NoInternal> {
    let file = object::File::parse(bytes).map_err(|e| NoInternal::Unreadable {
        reason: e.to_string(),
    })?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(NoInternal::Architecture);
    }
    let wanted = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"];
    let mut found: HashMap<&str, u64> = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !sym.is_definition() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        if let Ok(name) = sym.name()
            && let Some(w) = wanted.iter().find(|w| **w == name)
        {
            found.entry(w).or_insert(sym.address());
        }
    }
    let first_call = |symbol: &'static str| -> Result<u64, NoInternal> {
        let address = *found.get(symbol).ok_or(NoInternal::Missing { symbol })?;
        let code = code_at(&file, address, SCAN_BYTES).ok_or(NoInternal::NoCall { symbol })?;
        first_call_target(code, address).ok_or(NoInternal::NoCall { symbol })
    };
    let read = first_call("SSL_read")?;
    if first_call("SSL_read_ex")? != read {
        return Err(NoInternal::Disagree {
            first: "SSL_read",
            second: "SSL_read_ex",
        });
    }
    let write = first_call("SSL_write")?;
    if first_call("SSL_write_ex")? != write {
        return Err(NoInternal::Disagree {
            first: "SSL_write",
            second: "SSL_write_ex",
        });
    }
    if read == write {
        return Err(NoInternal::Disagree {
            first: "SSL_read",
            second: "SSL_write",
        });
    }
    let offset = |address: u64, symbol: &'static str| {
        file_offset(&file, address).ok_or(NoInternal::NoCall { symbol })
    };
    let emulated = [read, write]
        .iter()
        .all(|a| code_at(&file, *a, 16).is_some_and(|code| first_is_emulated(code, *a)));
    Ok(Internal {
        read: offset(read, "SSL_read")?,
        write: offset(write, "SSL_write")?,
        emulated,
    })
}

/// Up to `len` bytes of executable code at virtual `address`.
fn code_at<'a>(file: &object::File<'a>, address: u64, len: usize) -> Option<&'a [u8]> {
    let section = text_section(file, address)?;
    let data = section.data().ok()?;
    let start = usize::try_from(address.checked_sub(section.address())?).ok()?;
    let end = data.len().min(start.checked_add(len)?);
    data.get(start..end)
}

fn text_section<'a, 'f>(
    file: &'f object::File<'a>,
    address: u64,
) -> Option<object::Section<'a, 'f>> {
    file.sections().find(|s| {
        s.kind() == SectionKind::Text
            && address >= s.address()
            && address < s.address().saturating_add(s.size())
    })
}

/// The file offset of virtual `address`, which must be in an executable section.
fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    let section = text_section(file, address)?;
    let (start, _) = section.file_range()?;
    address.checked_sub(section.address())?.checked_add(start)
}

/// The target of the first direct near call or tail jump in `code` (decoded from `ip`), before
/// any return or indirect jump ends the straight-line start of the function.
fn first_call_target(code: &[u8], ip: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return None;
        }
        match insn.flow_control() {
            FlowControl::Call if matches!(insn.code(), Code::Call_rel32_64) => {
                return Some(insn.near_branch_target());
            }
            // A tail call (`SSL_read_ex` built as `jmp ssl_read_internal`). A jump inside the
            // function would give a target its sibling does not share: the caller's agreement
            // check then refuses the placement.
            FlowControl::UnconditionalBranch
                if matches!(insn.code(), Code::Jmp_rel32_64 | Code::Jmp_rel8_64) =>
            {
                return Some(insn.near_branch_target());
            }
            FlowControl::Return | FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                return None;
            }
            _ => {}
        }
    }
    None
}

/// Whether the kernel's x86-64 uprobes emulate the first instruction at `ip` (no
/// single-step): direct calls and jumps, conditional jumps, `nop`s and register pushes.
fn first_is_emulated(code: &[u8], ip: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return false;
    }
    match insn.mnemonic() {
        Mnemonic::Call | Mnemonic::Jmp => insn.is_call_near() || insn.is_jmp_near(),
        Mnemonic::Nop => true,
        Mnemonic::Push => matches!(insn.code(), Code::Push_r64),
        _ => insn.is_jcc_short_or_near(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_is_found_past_the_prologue() {
        // SSL_read of Debian 12's libssl.so.3 (OpenSSL 3.0), at 0x35430.
        let code = [
            0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
            0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, // mov %fs:0x28,%rax
            0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
            0x31, 0xc0, // xor %eax,%eax
            0x85, 0xd2, // test %edx,%edx
            0x78, 0x2f, // js +0x2f (the error path: a call to ERR_new)
            0x48, 0x89, 0xe1, // mov %rsp,%rcx
            0x48, 0x63, 0xd2, // movslq %edx,%rdx
            0xe8, 0x3d, 0xfe, 0xff, 0xff, // call 0x35290
            0x85, 0xc0, // test %eax,%eax
        ];
        assert_eq!(first_call_target(&code, 0x35430), Some(0x35290));
        // A tail call: its target.
        assert_eq!(
            first_call_target(&[0xe9, 0x00, 0x01, 0x00, 0x00], 0x2000),
            Some(0x2105)
        );
        // A return before any call: nothing.
        assert_eq!(first_call_target(&[0x31, 0xc0, 0xc3], 0x1000), None);
        // Garbage: nothing.
        assert_eq!(first_call_target(&[0x0f, 0x0b, 0xff], 0x1000), None);
    }

    #[test]
    fn pushes_calls_jumps_and_nops_are_emulated_a_stack_adjustment_is_not() {
        assert!(first_is_emulated(&[0x41, 0x55], 0)); // push %r13
        assert!(first_is_emulated(&[0x53], 0)); // push %rbx
        assert!(first_is_emulated(&[0xe8, 0, 0, 0, 0], 0)); // call
        assert!(first_is_emulated(&[0x0f, 0x1f, 0x00], 0)); // nopl (%rax)
        assert!(first_is_emulated(&[0x78, 0x2f], 0)); // js
        assert!(!first_is_emulated(&[0x48, 0x83, 0xec, 0x18], 0)); // sub $0x18,%rsp
        assert!(!first_is_emulated(&[0xf3, 0x0f, 0x1e, 0xfa], 0)); // endbr64
    }

    /// The libssl of the machine running the tests (Debian's `libssl3`, which
    /// scripts/install-deps.sh brings with `openssl`).
    #[test]
    fn the_system_libssl_has_internal_functions() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let internal = internal_functions(path).unwrap();
        assert_ne!(internal.read, internal.write);
        assert!(internal.emulated, "{internal:?}");
    }

    #[test]
    fn non_elf_input_is_refused_not_a_panic() {
        assert!(matches!(
            internal_functions_in(b"not an elf"),
            Err(NoInternal::Unreadable { .. })
        ));
    }
}
