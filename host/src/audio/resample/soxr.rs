//! The system's libsoxr (Debian `libsoxr0`), loaded at run time: `soxr_oneshot` at the "HQ"
//! quality the reference uses. Loading it dynamically keeps the binary free of a link-time
//! dependency; without it the callers fall back to rubato.

/// What libsoxr reported.
#[derive(Debug, Clone, thiserror::Error)]
#[error("libsoxr: {0}")]
pub struct SoxrError(pub String);

/// libsoxr's names for the symbols used (soxr.h, 0.1.x).
#[repr(C)]
#[derive(Clone, Copy)]
struct SoxrQualitySpec {
    precision: f64,
    phase_response: f64,
    passband_end: f64,
    stopband_begin: f64,
    e: *mut std::ffi::c_void,
    flags: std::ffi::c_ulong,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SoxrIoSpec {
    itype: std::ffi::c_int,
    otype: std::ffi::c_int,
    scale: f64,
    e: *mut std::ffi::c_void,
    flags: std::ffi::c_ulong,
}

type SoxrOneshot = unsafe extern "C" fn(
    f64,
    f64,
    std::ffi::c_uint,
    *const f32,
    usize,
    *mut usize,
    *mut f32,
    usize,
    *mut usize,
    *const SoxrIoSpec,
    *const SoxrQualitySpec,
    *const std::ffi::c_void,
) -> *const std::ffi::c_char;

const SOXR_HQ: std::ffi::c_ulong = 4; // SOXR_20_BITQ
const SOXR_FLOAT32_I: std::ffi::c_int = 0;

pub(crate) struct SoxrLib {
    oneshot: SoxrOneshot,
    quality: SoxrQualitySpec,
    io: SoxrIoSpec,
    /// Keeps `oneshot` valid.
    _lib: libloading::Library,
}

// SAFETY: the specs hold null `e` pointers only; the library handle and function pointer
// are plain code addresses, and soxr_oneshot keeps no state between calls.
unsafe impl Send for SoxrLib {}

impl SoxrLib {
    /// The library, if the system has it.
    pub(crate) fn load() -> Option<Self> {
        for name in ["libsoxr.so.0", "libsoxr.so"] {
            // SAFETY: libsoxr's initialisers have no preconditions; the symbols are
            // declared with the signatures of soxr.h.
            let loaded = unsafe {
                libloading::Library::new(name).and_then(|lib| {
                    let quality_spec: libloading::Symbol<
                        unsafe extern "C" fn(std::ffi::c_ulong, std::ffi::c_ulong) -> SoxrQualitySpec,
                    > = lib.get(b"soxr_quality_spec\0")?;
                    let io_spec: libloading::Symbol<
                        unsafe extern "C" fn(std::ffi::c_int, std::ffi::c_int) -> SoxrIoSpec,
                    > = lib.get(b"soxr_io_spec\0")?;
                    let oneshot: libloading::Symbol<SoxrOneshot> = lib.get(b"soxr_oneshot\0")?;
                    let quality = quality_spec(SOXR_HQ, 0);
                    let io = io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
                    let oneshot = *oneshot;
                    Ok(SoxrLib { oneshot, quality, io, _lib: lib })
                })
            };
            if let Ok(lib) = loaded {
                return Some(lib);
            }
        }
        None
    }

    /// Resamples `input` from `from_hz` to `to_hz` into `out`; returns the samples written.
    pub(crate) fn process(&self, from_hz: f64, to_hz: f64, input: &[f32], out: &mut [f32]) -> Result<usize, SoxrError> {
        let mut done = 0usize;
        // SAFETY: `input` and `out` are valid for the lengths passed; the specs come from
        // libsoxr itself; idone may be null.
        let err = unsafe {
            (self.oneshot)(
                from_hz,
                to_hz,
                1,
                input.as_ptr(),
                input.len(),
                std::ptr::null_mut(),
                out.as_mut_ptr(),
                out.len(),
                &mut done,
                &self.io,
                &self.quality,
                std::ptr::null(),
            )
        };
        if err.is_null() {
            Ok(done)
        } else {
            // SAFETY: soxr errors are static NUL-terminated strings.
            let msg = unsafe { std::ffi::CStr::from_ptr(err) };
            Err(SoxrError(msg.to_string_lossy().into_owned()))
        }
    }
}
