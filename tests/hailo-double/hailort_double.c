/*
 * hailort_double.c: a stand-in for libhailort.so (HailoRT 4.23, Hailo-8) that
 * implements exactly the C functions spark-edge calls, with no hardware.
 *
 * Built by the tests and the benchmark into a shared library named
 * `libhailort.so.4.23.0` and opened through hailo_sys::load, i.e. the same
 * dlopen path production uses. Compiled against hailo-sys' bundled
 * declarations (hailo-sys/include/hailort_subset.h).
 *
 * THE "DEVICE"
 *   One Hailo-8 at PCIe id 0000:01:00.0, firmware 4.23.0, 45.5/46.25 degC.
 *   A vdevice takes it exclusively (a second one gets HAILO_DEVICE_IN_USE)
 *   unless `multi_process_service` is set.
 *
 * THE "HEF"
 *   The text `HAILODOUBLE-HEF <height> <width>` (from a file or a buffer;
 *   height and width multiples of 4). It holds one network group
 *   "centerface" shaped like CenterFace:
 *     input  centerface/input_layer1   NHWC [H, W, 3]
 *     output centerface/heatmap        NHWC [H/4, W/4, 1]   HEF index 0
 *     output centerface/scale          NHWC [H/4, W/4, 2]   HEF index 1
 *     output centerface/offset         NHWC [H/4, W/4, 2]   HEF index 2
 *     output centerface/landmarks      NHWC [H/4, W/4, 10]  HEF index 3
 *   hailo_hef_get_sorted_output_names lists the outputs in HEF index order;
 *   hailo_make_output_vstream_params lists them alphabetically (as HailoRT's
 *   name-keyed map does), so a caller that trusts the params order gets
 *   heatmap, landmarks, offset, scale.
 *   The input's HEF format type is FLOAT32; outputs are read as FLOAT32
 *   user buffers in NHWC (or AUTO) order.
 *
 * HEF VARIANTS (words after `<height> <width>`, any order; the text may be
 * up to 1023 bytes)
 *   input=f32|u8|u16   the input's HEF format type (hailo_vstream_info_t
 *                      .format.type): FLOAT32 (default), UINT8 or UINT16. A
 *                      user buffer of type AUTO takes it; FLOAT32 is also
 *                      accepted (HailoRT quantises on the host). A UINT8
 *                      frame is H*W*3 bytes, NHWC.
 *   record=PATH        every input frame written is stored, byte for byte,
 *                      in PATH (replaced per frame), so a test can compare.
 *   nms=CxM            instead of the CenterFace outputs, one output
 *                      `yolov8s/yolov8_nms_postprocess` with format order
 *                      HAILO_NMS_BY_CLASS and nms_shape {C classes, M boxes
 *                      per class}; its float32 frame is C * (1 + 5 * M)
 *                      floats: per class a count, then that many boxes
 *                      {y_min, x_min, y_max, x_max, score}, zeros after.
 *   nms-order=legacy|by-score  report HAILO_NMS (9) or HAILO_NMS_BY_SCORE
 *                      (23) instead of BY_CLASS (22). A BY_SCORE frame is
 *                      laid out as hailort.h's hailo_detections_t, which it
 *                      declares packed (#pragma pack(1)): a uint16 count,
 *                      then from byte 2 up to C*M hailo_detection_t of 22
 *                      bytes {y_min, x_min, y_max, x_max, score (float32),
 *                      class_id (uint16)}; its size is 2 + 22 * C*M bytes,
 *                      as HailoRT computes it.
 *                      Faults: `too-many` counts C*M + 1, `nan` gives the
 *                      first detection a NaN score, `truncated` counts C*M
 *                      in a frame shortened by `short` (bytes here).
 *   box=C:Y1,X1,Y2,X2,S  a box of class C returned in every NMS frame (up
 *                      to 32 boxes, in the order given).
 *   short=K            the NMS output's frame size is K floats (BY_SCORE:
 *                      bytes) less than the full size (a library reporting
 *                      a smaller frame).
 *   fault=KIND@N       the N-th read (1-based) of the NMS output is
 *                      malformed: `too-many` class 0 counts M + 1 boxes;
 *                      `nan` class 0 holds one box with a NaN score;
 *                      `truncated` the last class counts M boxes, which do
 *                      not fit a frame shortened by `short`.
 *   The input of an NMS variant is `yolov8s/input_layer1`; its outputs'
 *   values do not depend on the input.
 *   timing             turn the TIMING MODEL on with its defaults (below).
 *   timing=T:L:D       the timing model with chip time T and latency L in
 *                      microseconds (L >= T > 0) and queue depth D (1..16).
 *
 * THE COMPUTATION (so tests can prove data crossed the boundary both ways)
 *   Writing a frame x (float32, NHWC, n = H*W*3 elements) computes
 *       S = sum over i of x[i] * (1 + i mod 7)        (i = NHWC flat index,
 *                                                      accumulated in double)
 *   and queues S on every output vstream. Reading output k (HEF index)
 *   returns, for its NHWC flat index j,
 *       y[j] = (float)(S * 0.001 + (k + 1) + j * 0.001)
 *   The weights make S depend on the input layout, and j makes y depend on
 *   the output layout, so a wrong transpose on either side changes values.
 *   Each output vstream is a FIFO of `queue_size` frames (from its params): a
 *   write into a full queue, or a read from an empty one, is HAILO_TIMEOUT
 *   (with the timing model on, the FIFO holds D frames and both wait instead).
 *
 * TIMING MODEL (off unless the HEF or HAILO_DOUBLE_TIMING asks for it)
 *   A chip that takes T per frame with a latency of L (L >= T), holding at
 *   most D frames: a write blocks while D frames are pending (written and
 *   not yet read by every output), up to the vstream's timeout_ms (then
 *   HAILO_TIMEOUT); a frame written at time t is ready at
 *   max(t + L, ready time of the previous frame + T), and a read blocks until
 *   the oldest queued frame is ready (so at most one frame per T comes out).
 *   Defaults, from published Hailo-8 figures for a yolov8s-class network
 *   (docs/hailo.md): T = 2000 us, L = 8000 us, D = 8.
 *   HAILO_DOUBLE_TIMING=T:L:D (or `default`) turns it on for every HEF that
 *   names no `timing` word; read when the HEF is created.
 *   With timing off, a write into a full queue and a read from an empty one
 *   return HAILO_TIMEOUT at once, as they always did. Vstream I/O is
 *   serialised by one lock either way, so a writer thread and a reader
 *   thread may use the same network group at once (as HailoRT allows).
 *
 * FAILURE INJECTION (environment variables, read on every call)
 *   HAILO_DOUBLE_NO_DEVICE=1       scan finds nothing; vdevice creation fails
 *                                  with HAILO_OUT_OF_PHYSICAL_DEVICES (74).
 *   HAILO_DOUBLE_INVALID_HEF=1     every HEF is rejected: HAILO_INVALID_HEF (26).
 *   HAILO_DOUBLE_VERSION=a.b.c     hailo_get_library_version reports a.b.c.
 *   HAILO_DOUBLE_TIMEOUT_AT=N      the N-th write (1-based, counted per process)
 *                                  is accepted, but the next read returns
 *                                  HAILO_TIMEOUT (4) and leaves that frame
 *                                  queued, like a late device: a caller that
 *                                  does not clear its vstreams then reads stale
 *                                  frames.
 *   HAILO_DOUBLE_DEVICE_LOST_AT=N  from the N-th write on, the device is lost
 *                                  (see below) until the file named by
 *                                  HAILO_DOUBLE_RECOVER_FILE exists.
 *   HAILO_DOUBLE_CONTROL=/path     a file whose first word is read on every
 *                                  call: `ok` (or no file) normal; `lost` the
 *                                  device is lost; `nodevice` same as lost;
 *                                  `timeout` every write and read returns
 *                                  HAILO_TIMEOUT. This lets a test make the
 *                                  device vanish and return at run time.
 *   HAILO_DOUBLE_LOST_STATUS=N     the status a lost device returns from
 *                                  I/O, identify and temperature (default 36,
 *                                  HAILO_DRIVER_OPERATION_FAILED; try 87,
 *                                  HAILO_DRIVER_TIMEOUT).
 *   HAILO_DOUBLE_TEMPERATURE=C     both sensors report C degrees.
 *   While lost: scan finds nothing, vdevice creation returns 74, configure /
 *   clear / I/O / identify / temperature return the lost status. Releasing
 *   handles always works.
 *
 * EXTRA SYMBOLS (not HailoRT; for tests and the benchmark)
 *   long hailo_double_live_handles(void)  HEFs, vdevices, network groups and
 *                                          vstreams currently allocated.
 *   int  hailo_double_direct_loop(uint32_t h, uint32_t w, uint64_t n)
 *        sets everything up, runs n write + 4-read inferences directly in C,
 *        tears down; returns the first failing status or 0.
 *
 * Misuse that would be undefined behaviour in HailoRT (releasing a vdevice
 * while vstreams of its network groups are alive) aborts the process.
 */
#define _POSIX_C_SOURCE 200809L /* strtok_r, clock_gettime */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hailort_subset.h"

#define EXPORT __attribute__((visibility("default")))

#define MAGIC_HEF 0x48454631u
#define MAGIC_VDEV 0x56444556u
#define MAGIC_NG 0x4e475250u
#define MAGIC_IN 0x494e5653u
#define MAGIC_OUT 0x4f555453u
#define MAX_NGS 8
#define N_OUTPUTS 4
#define MAX_QUEUE 16
#define MAX_BOXES 32
#define HEF_TEXT_MAX 1024

static atomic_long g_live = 0;
static atomic_ulong g_writes = 0;
static atomic_int g_vdevices_exclusive = 0;
/* Serialises vstream I/O (write, read, clear); `g_io_changed` is signalled
 * whenever a queue changes, for the timing model's waits. */
static pthread_mutex_t g_io = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_io_changed = PTHREAD_COND_INITIALIZER;

#define TIMING_T_US 2000L
#define TIMING_L_US 8000L
#define TIMING_D 8L

struct output_desc {
    const char *name;
    uint32_t features;
};

/* HEF order. */
static const struct output_desc OUTPUTS[N_OUTPUTS] = {
    {"centerface/heatmap", 1},
    {"centerface/scale", 2},
    {"centerface/offset", 2},
    {"centerface/landmarks", 10},
};
/* Alphabetical order, as the params come back from HailoRT. */
static const int PARAMS_ORDER[N_OUTPUTS] = {0, 3, 2, 1};

static const char *NG_NAME = "centerface";
static const char *NETWORK_NAME = "centerface/centerface";
static const char *INPUT_NAME = "centerface/input_layer1";
static const char *NMS_NG_NAME = "yolov8s";
static const char *NMS_NETWORK_NAME = "yolov8s/yolov8s";
static const char *NMS_INPUT_NAME = "yolov8s/input_layer1";
static const char *NMS_OUTPUT_NAME = "yolov8s/yolov8_nms_postprocess";

enum nms_fault { FAULT_NONE, FAULT_TOO_MANY, FAULT_NAN, FAULT_TRUNCATED };

struct nms_box {
    uint32_t cls;
    float v[5];
};

/* What the HEF text asks for (see HEF VARIANTS). */
struct variant {
    hailo_format_type_t in_type;
    char record[512];
    uint32_t nms_classes, nms_max; /* nms_classes == 0: CenterFace outputs */
    hailo_format_order_t nms_order;
    struct nms_box boxes[MAX_BOXES];
    int nbox;
    uint32_t short_floats;
    enum nms_fault fault;
    unsigned long fault_at;
    /* The timing model: on when timing_d > 0. */
    long timing_t_us, timing_l_us, timing_d;
};

struct _hailo_hef {
    uint32_t magic;
    uint32_t height, width;
    struct variant v;
};

struct _hailo_device {
    int index;
};

struct _hailo_output_vstream;

struct _hailo_configured_network_group {
    uint32_t magic;
    uint32_t height, width;
    struct variant v;
    struct _hailo_output_vstream *outs[N_OUTPUTS];
    int live_vstreams;
    int late;
    double last_ready; /* timing: when the previous frame is ready (seconds, CLOCK_MONOTONIC) */
};

struct _hailo_vdevice {
    uint32_t magic;
    int exclusive;
    int multi_process_service;
    struct _hailo_device phys;
    struct _hailo_configured_network_group *ngs[MAX_NGS];
    int ng_count;
};

struct _hailo_input_vstream {
    uint32_t magic;
    struct _hailo_configured_network_group *ng;
    uint32_t timeout_ms;
    hailo_format_type_t user_type; /* resolved: never AUTO */
};

struct _hailo_output_vstream {
    uint32_t magic;
    struct _hailo_configured_network_group *ng;
    int index; /* HEF index */
    uint32_t cap, head, count;
    uint32_t timeout_ms;
    double queue[MAX_QUEUE];
    double ready[MAX_QUEUE]; /* timing: when each queued frame may be read */
    unsigned long reads; /* successful reads so far, for fault=KIND@N */
};

/* ---- helpers -------------------------------------------------------------- */

static void *alloc_handle(size_t size) {
    void *p = calloc(1, size);
    if (p != NULL) {
        atomic_fetch_add(&g_live, 1);
    }
    return p;
}

static void free_handle(void *p) {
    if (p != NULL) {
        atomic_fetch_sub(&g_live, 1);
        free(p);
    }
}

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v != NULL && strcmp(v, "1") == 0;
}

static long env_long(const char *name, long fallback) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        return fallback;
    }
    char *end = NULL;
    long n = strtol(v, &end, 10);
    return (end != NULL && *end == '\0') ? n : fallback;
}

enum dev_state { DEV_OK, DEV_LOST, DEV_TIMEOUT };

static enum dev_state control_file_state(void) {
    const char *path = getenv("HAILO_DOUBLE_CONTROL");
    if (path == NULL || *path == '\0') {
        return DEV_OK;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return DEV_OK;
    }
    char word[32] = {0};
    int n = fscanf(f, "%31s", word);
    fclose(f);
    if (n != 1) {
        return DEV_OK;
    }
    if (strcmp(word, "lost") == 0 || strcmp(word, "nodevice") == 0) {
        return DEV_LOST;
    }
    if (strcmp(word, "timeout") == 0) {
        return DEV_TIMEOUT;
    }
    return DEV_OK;
}

static enum dev_state device_state(void) {
    if (env_flag("HAILO_DOUBLE_NO_DEVICE")) {
        return DEV_LOST;
    }
    long lost_at = env_long("HAILO_DOUBLE_DEVICE_LOST_AT", 0);
    if (lost_at > 0 && atomic_load(&g_writes) >= (unsigned long)lost_at) {
        const char *recover = getenv("HAILO_DOUBLE_RECOVER_FILE");
        if (recover == NULL || access(recover, F_OK) != 0) {
            return DEV_LOST;
        }
    }
    return control_file_state();
}

static hailo_status lost_status(void) {
    return (hailo_status)env_long("HAILO_DOUBLE_LOST_STATUS", HAILO_DRIVER_OPERATION_FAILED);
}

/* The status an I/O-ish call returns in the current state, or HAILO_SUCCESS. */
static hailo_status io_gate(void) {
    switch (device_state()) {
    case DEV_LOST:
        return lost_status();
    case DEV_TIMEOUT:
        return HAILO_TIMEOUT;
    default:
        return HAILO_SUCCESS;
    }
}

static void copy_name(char *dst, size_t cap, const char *src) {
    memset(dst, 0, cap);
    strncpy(dst, src, cap - 1);
}

static int is_nms(const struct variant *v) {
    return v->nms_classes > 0;
}

static int n_outputs(const struct variant *v) {
    return is_nms(v) ? 1 : N_OUTPUTS;
}

static const char *ng_name(const struct variant *v) {
    return is_nms(v) ? NMS_NG_NAME : NG_NAME;
}

static const char *network_name(const struct variant *v) {
    return is_nms(v) ? NMS_NETWORK_NAME : NETWORK_NAME;
}

static const char *input_name(const struct variant *v) {
    return is_nms(v) ? NMS_INPUT_NAME : INPUT_NAME;
}

/* Output names in HEF index order. */
static const char *output_name(const struct variant *v, int index) {
    return is_nms(v) ? NMS_OUTPUT_NAME : OUTPUTS[index].name;
}

static size_t type_bytes(hailo_format_type_t t) {
    switch (t) {
    case HAILO_FORMAT_TYPE_UINT8: return 1;
    case HAILO_FORMAT_TYPE_UINT16: return 2;
    default: return sizeof(float);
    }
}

static size_t input_frame_bytes(const struct _hailo_configured_network_group *ng, hailo_format_type_t user_type) {
    return (size_t)ng->height * ng->width * 3 * type_bytes(user_type);
}

static size_t nms_full_floats(const struct variant *v) {
    return (size_t)v->nms_classes * (1 + 5 * (size_t)v->nms_max);
}

static size_t by_score_frame_bytes(const struct variant *v) {
    return 2 + 22 * (size_t)v->nms_classes * v->nms_max;
}

static size_t output_frame_bytes(const struct _hailo_configured_network_group *ng, int index) {
    if (is_nms(&ng->v) && ng->v.nms_order == HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE) {
        return by_score_frame_bytes(&ng->v) - ng->v.short_floats;
    }
    if (is_nms(&ng->v)) {
        return (nms_full_floats(&ng->v) - ng->v.short_floats) * sizeof(float);
    }
    return (size_t)(ng->height / 4) * (ng->width / 4) * OUTPUTS[index].features * sizeof(float);
}

static int output_index(const struct variant *v, const char *name) {
    for (int i = 0; i < n_outputs(v); i++) {
        if (strncmp(name, output_name(v, i), HAILO_MAX_STREAM_NAME_SIZE) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- library ------------------------------------------------------------------ */

EXPORT hailo_status hailo_get_library_version(hailo_version_t *version) {
    if (version == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    unsigned a = 4, b = 23, c = 0;
    const char *v = getenv("HAILO_DOUBLE_VERSION");
    if (v != NULL && sscanf(v, "%u.%u.%u", &a, &b, &c) != 3) {
        a = 4, b = 23, c = 0;
    }
    version->major = a;
    version->minor = b;
    version->revision = c;
    return HAILO_SUCCESS;
}

EXPORT const char *hailo_get_status_message(hailo_status status) {
    switch (status) {
    case HAILO_SUCCESS: return "Success (test double)";
    case HAILO_INVALID_ARGUMENT: return "Invalid argument (test double)";
    case HAILO_TIMEOUT: return "Received a timeout (test double)";
    case HAILO_INSUFFICIENT_BUFFER: return "Buffer is insufficient (test double)";
    case HAILO_INVALID_HEF: return "Invalid HEF (test double)";
    case HAILO_DRIVER_OPERATION_FAILED: return "Driver operation failed (test double)";
    case HAILO_DEVICE_IN_USE: return "The device is already in use (test double)";
    case HAILO_OUT_OF_PHYSICAL_DEVICES: return "There are not enough physical devices (test double)";
    case HAILO_DRIVER_TIMEOUT: return "Driver operation returned a timeout (test double)";
    default: return NULL;
    }
}

/* ---- devices -------------------------------------------------------------------- */

EXPORT hailo_status hailo_scan_devices(hailo_scan_devices_params_t *params, hailo_device_id_t *device_ids,
                                       size_t *device_ids_length) {
    if (params != NULL || device_ids_length == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        *device_ids_length = 0;
        return HAILO_SUCCESS;
    }
    if (*device_ids_length < 1 || device_ids == NULL) {
        *device_ids_length = 1;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    copy_name(device_ids[0].id, sizeof device_ids[0].id, "0000:01:00.0");
    *device_ids_length = 1;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_identify(hailo_device device, hailo_device_identity_t *id) {
    if (device == NULL || id == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        return lost_status();
    }
    memset(id, 0, sizeof *id);
    id->protocol_version = 2;
    id->fw_version.major = 4;
    id->fw_version.minor = 23;
    id->fw_version.revision = 0;
    id->logger_version = 0;
    /* Hailo's fixed-size strings are length-delimited, not NUL-terminated:
     * fill the whole array and rely on the length. */
    static const char board[] = "Hailo-8 (test double)";
    memset(id->board_name, 'X', sizeof id->board_name);
    memcpy(id->board_name, board, sizeof board - 1);
    id->board_name_length = (uint8_t)(sizeof board - 1);
    id->is_release = true;
    id->device_architecture = HAILO_ARCH_HAILO8;
    static const char serial[] = "HLDDLBT000000001";
    memcpy(id->serial_number, serial, sizeof id->serial_number);
    id->serial_number_length = (uint8_t)sizeof id->serial_number;
    static const char part[] = "HM218B1C2FAE";
    memcpy(id->part_number, part, sizeof part - 1);
    id->part_number_length = (uint8_t)(sizeof part - 1);
    static const char product[] = "HAILO-8 AI ACCELERATOR M.2 (DOUBLE)";
    memcpy(id->product_name, product, sizeof product - 1);
    id->product_name_length = (uint8_t)(sizeof product - 1);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_chip_temperature(hailo_device device, hailo_chip_temperature_info_t *info) {
    if (device == NULL || info == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        return lost_status();
    }
    const char *t = getenv("HAILO_DOUBLE_TEMPERATURE");
    float c = 0.0f;
    if (t != NULL && sscanf(t, "%f", &c) == 1) {
        info->ts0_temperature = c;
        info->ts1_temperature = c;
    } else {
        info->ts0_temperature = 45.5f;
        info->ts1_temperature = 46.25f;
    }
    info->sample_count = 1;
    return HAILO_SUCCESS;
}

/* ---- vdevice ----------------------------------------------------------------------- */

EXPORT hailo_status hailo_init_vdevice_params(hailo_vdevice_params_t *params) {
    if (params == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    memset(params, 0, sizeof *params);
    params->device_count = HAILO_DEFAULT_DEVICE_COUNT;
    params->device_ids = NULL;
    params->scheduling_algorithm = HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN;
    params->group_id = "UNIQUE";
    params->multi_process_service = false;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_create_vdevice(hailo_vdevice_params_t *params, hailo_vdevice *vdevice) {
    if (vdevice == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    hailo_vdevice_params_t defaults;
    if (params == NULL) {
        hailo_init_vdevice_params(&defaults);
        params = &defaults;
    }
    if (params->scheduling_algorithm != HAILO_SCHEDULING_ALGORITHM_NONE &&
        params->scheduling_algorithm != HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST || params->device_count > 1) {
        return HAILO_OUT_OF_PHYSICAL_DEVICES;
    }
    int exclusive = !params->multi_process_service;
    if (exclusive) {
        int expected = 0;
        if (!atomic_compare_exchange_strong(&g_vdevices_exclusive, &expected, 1)) {
            return HAILO_DEVICE_IN_USE;
        }
    }
    struct _hailo_vdevice *v = alloc_handle(sizeof *v);
    if (v == NULL) {
        if (exclusive) {
            atomic_store(&g_vdevices_exclusive, 0);
        }
        return HAILO_OUT_OF_HOST_MEMORY;
    }
    v->magic = MAGIC_VDEV;
    v->exclusive = exclusive;
    v->multi_process_service = params->multi_process_service;
    *vdevice = v;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_physical_devices(hailo_vdevice vdevice, hailo_device *devices,
                                               size_t *number_of_devices) {
    if (vdevice == NULL || vdevice->magic != MAGIC_VDEV || number_of_devices == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (vdevice->multi_process_service) {
        return HAILO_NOT_SUPPORTED;
    }
    if (*number_of_devices < 1 || devices == NULL) {
        *number_of_devices = 1;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    devices[0] = &vdevice->phys;
    *number_of_devices = 1;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_release_vdevice(hailo_vdevice vdevice) {
    if (vdevice == NULL || vdevice->magic != MAGIC_VDEV) {
        return HAILO_INVALID_ARGUMENT;
    }
    for (int i = 0; i < vdevice->ng_count; i++) {
        if (vdevice->ngs[i]->live_vstreams != 0) {
            fprintf(stderr, "hailort double: vdevice released while %d vstreams of its network group are alive\n",
                    vdevice->ngs[i]->live_vstreams);
            abort();
        }
        vdevice->ngs[i]->magic = 0;
        free_handle(vdevice->ngs[i]);
    }
    if (vdevice->exclusive) {
        atomic_store(&g_vdevices_exclusive, 0);
    }
    vdevice->magic = 0;
    free_handle(vdevice);
    return HAILO_SUCCESS;
}

/* ---- HEF ---------------------------------------------------------------------------- */

/* `T:L:D` (or `default`) into the variant's timing model; 0 on success. */
static int parse_timing(const char *text, struct variant *v) {
    long t = TIMING_T_US, l = TIMING_L_US, d = TIMING_D;
    char tail = 0;
    if (strcmp(text, "default") != 0 && sscanf(text, "%ld:%ld:%ld%c", &t, &l, &d, &tail) != 3) {
        return -1;
    }
    if (t <= 0 || l < t || l > 10L * 1000 * 1000 || d < 1 || d > MAX_QUEUE) {
        return -1;
    }
    v->timing_t_us = t;
    v->timing_l_us = l;
    v->timing_d = d;
    return 0;
}

/* One variant word; 0 on success. */
static int parse_word(const char *w, struct variant *v) {
    unsigned a = 0, b = 0;
    char kind[16] = {0};
    unsigned long at = 0;
    struct nms_box box;
    if (strcmp(w, "input=f32") == 0) {
        v->in_type = HAILO_FORMAT_TYPE_FLOAT32;
    } else if (strcmp(w, "input=u8") == 0) {
        v->in_type = HAILO_FORMAT_TYPE_UINT8;
    } else if (strcmp(w, "input=u16") == 0) {
        v->in_type = HAILO_FORMAT_TYPE_UINT16;
    } else if (strncmp(w, "record=", 7) == 0 && strlen(w + 7) > 0 && strlen(w + 7) < sizeof v->record) {
        strcpy(v->record, w + 7);
    } else if (sscanf(w, "nms=%ux%u", &a, &b) == 2 && a > 0 && b > 0 && a <= 1000 && b <= 1000) {
        v->nms_classes = a;
        v->nms_max = b;
    } else if (strcmp(w, "nms-order=legacy") == 0) {
        v->nms_order = HAILO_FORMAT_ORDER_HAILO_NMS;
    } else if (strcmp(w, "nms-order=by-score") == 0) {
        v->nms_order = HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE;
    } else if (sscanf(w, "box=%u:%f,%f,%f,%f,%f", &box.cls, &box.v[0], &box.v[1], &box.v[2], &box.v[3],
                      &box.v[4]) == 6 && v->nbox < MAX_BOXES) {
        v->boxes[v->nbox++] = box;
    } else if (strcmp(w, "timing") == 0) {
        v->timing_t_us = TIMING_T_US;
        v->timing_l_us = TIMING_L_US;
        v->timing_d = TIMING_D;
    } else if (strncmp(w, "timing=", 7) == 0) {
        return parse_timing(w + 7, v);
    } else if (sscanf(w, "short=%u", &a) == 1) {
        v->short_floats = a;
    } else if (sscanf(w, "fault=%15[a-z-]@%lu", kind, &at) == 2 && at > 0) {
        v->fault_at = at;
        if (strcmp(kind, "too-many") == 0) {
            v->fault = FAULT_TOO_MANY;
        } else if (strcmp(kind, "nan") == 0) {
            v->fault = FAULT_NAN;
        } else if (strcmp(kind, "truncated") == 0) {
            v->fault = FAULT_TRUNCATED;
        } else {
            return -1;
        }
    } else {
        return -1;
    }
    return 0;
}

static hailo_status parse_hef(const char *text, size_t size, uint32_t *h, uint32_t *w, struct variant *v) {
    if (env_flag("HAILO_DOUBLE_INVALID_HEF")) {
        return HAILO_INVALID_HEF;
    }
    char buf[HEF_TEXT_MAX] = {0};
    memcpy(buf, text, size < sizeof buf - 1 ? size : sizeof buf - 1);
    unsigned hh = 0, ww = 0;
    int used = 0;
    if (sscanf(buf, "HAILODOUBLE-HEF %u %u%n", &hh, &ww, &used) != 2 || hh < 4 || ww < 4 || hh % 4 || ww % 4 ||
        hh > 4096 || ww > 4096) {
        return HAILO_INVALID_HEF;
    }
    memset(v, 0, sizeof *v);
    v->in_type = HAILO_FORMAT_TYPE_FLOAT32;
    v->nms_order = HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS;
    for (char *save = NULL, *word = strtok_r(buf + used, " \t\n", &save); word != NULL;
         word = strtok_r(NULL, " \t\n", &save)) {
        if (parse_word(word, v) != 0) {
            return HAILO_INVALID_HEF;
        }
    }
    for (int i = 0; i < v->nbox; i++) {
        if (v->boxes[i].cls >= v->nms_classes) {
            return HAILO_INVALID_HEF;
        }
    }
    size_t full = v->nms_order == HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE ? by_score_frame_bytes(v) : nms_full_floats(v);
    if (is_nms(v) && v->short_floats >= full) {
        return HAILO_INVALID_HEF;
    }
    const char *timing = getenv("HAILO_DOUBLE_TIMING");
    if (v->timing_d == 0 && timing != NULL && *timing != '\0' && parse_timing(timing, v) != 0) {
        return HAILO_INVALID_HEF;
    }
    *h = hh;
    *w = ww;
    return HAILO_SUCCESS;
}

static hailo_status new_hef(hailo_hef *hef, uint32_t h, uint32_t w, const struct variant *v) {
    struct _hailo_hef *p = alloc_handle(sizeof *p);
    if (p == NULL) {
        return HAILO_OUT_OF_HOST_MEMORY;
    }
    p->magic = MAGIC_HEF;
    p->height = h;
    p->width = w;
    p->v = *v;
    *hef = p;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_create_hef_buffer(hailo_hef *hef, const void *buffer, size_t size) {
    if (hef == NULL || buffer == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    uint32_t h = 0, w = 0;
    struct variant v;
    hailo_status s = parse_hef(buffer, size, &h, &w, &v);
    return s == HAILO_SUCCESS ? new_hef(hef, h, w, &v) : s;
}

EXPORT hailo_status hailo_create_hef_file(hailo_hef *hef, const char *file_name) {
    if (hef == NULL || file_name == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    FILE *f = fopen(file_name, "rb");
    if (f == NULL) {
        return HAILO_OPEN_FILE_FAILURE;
    }
    char buf[HEF_TEXT_MAX] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    uint32_t h = 0, w = 0;
    struct variant v;
    hailo_status s = parse_hef(buf, n, &h, &w, &v);
    return s == HAILO_SUCCESS ? new_hef(hef, h, w, &v) : s;
}

EXPORT hailo_status hailo_release_hef(hailo_hef hef) {
    if (hef == NULL || hef->magic != MAGIC_HEF) {
        return HAILO_INVALID_ARGUMENT;
    }
    hef->magic = 0;
    free_handle(hef);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_hef_get_sorted_output_names(hailo_hef hef, const char *network_group_name,
                                                      hailo_layer_name_t *names, size_t *count) {
    if (hef == NULL || hef->magic != MAGIC_HEF || count == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (network_group_name != NULL && strcmp(network_group_name, ng_name(&hef->v)) != 0) {
        return HAILO_NOT_FOUND;
    }
    int n = n_outputs(&hef->v);
    if (*count < (size_t)n || names == NULL) {
        *count = (size_t)n;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    for (int i = 0; i < n; i++) {
        copy_name(names[i].name, sizeof names[i].name, output_name(&hef->v, i));
    }
    *count = (size_t)n;
    return HAILO_SUCCESS;
}

/* ---- configure ---------------------------------------------------------------------- */

EXPORT hailo_status hailo_init_configure_params_by_vdevice(hailo_hef hef, hailo_vdevice vdevice,
                                                           hailo_configure_params_t *params) {
    if (hef == NULL || hef->magic != MAGIC_HEF || vdevice == NULL || vdevice->magic != MAGIC_VDEV ||
        params == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    memset(params, 0, sizeof *params);
    params->network_group_params_count = 1;
    hailo_configure_network_group_params_t *ng = &params->network_group_params[0];
    const struct variant *v = &hef->v;
    copy_name(ng->name, sizeof ng->name, ng_name(v));
    ng->batch_size = HAILO_DEFAULT_BATCH_SIZE;
    ng->power_mode = HAILO_POWER_MODE_PERFORMANCE;
    ng->latency = HAILO_LATENCY_NONE;
    ng->stream_params_by_name_count = 1 + (size_t)n_outputs(v);
    copy_name(ng->stream_params_by_name[0].name, HAILO_MAX_STREAM_NAME_SIZE, input_name(v));
    ng->stream_params_by_name[0].stream_params.stream_interface = HAILO_STREAM_INTERFACE_PCIE;
    ng->stream_params_by_name[0].stream_params.direction = HAILO_H2D_STREAM;
    for (int i = 0; i < n_outputs(v); i++) {
        hailo_stream_parameters_by_name_t *s = &ng->stream_params_by_name[1 + i];
        copy_name(s->name, HAILO_MAX_STREAM_NAME_SIZE, output_name(v, i));
        s->stream_params.stream_interface = HAILO_STREAM_INTERFACE_PCIE;
        s->stream_params.direction = HAILO_D2H_STREAM;
    }
    ng->network_params_by_name_count = 1;
    copy_name(ng->network_params_by_name[0].name, HAILO_MAX_NETWORK_NAME_SIZE, network_name(v));
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_configure_vdevice(hailo_vdevice vdevice, hailo_hef hef, hailo_configure_params_t *params,
                                            hailo_configured_network_group *network_groups,
                                            size_t *number_of_network_groups) {
    if (vdevice == NULL || vdevice->magic != MAGIC_VDEV || hef == NULL || hef->magic != MAGIC_HEF ||
        network_groups == NULL || number_of_network_groups == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        return lost_status();
    }
    /* The params travel through the caller's memory: check that the fields
     * this double wrote are where it wrote them (a layout mismatch shows here). */
    if (params != NULL &&
        (params->network_group_params_count != 1 ||
         strcmp(params->network_group_params[0].name, ng_name(&hef->v)) != 0 ||
         params->network_group_params[0].stream_params_by_name_count != 1 + (size_t)n_outputs(&hef->v) ||
         strcmp(params->network_group_params[0].network_params_by_name[0].name, network_name(&hef->v)) != 0)) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (*number_of_network_groups < 1) {
        *number_of_network_groups = 1;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    if (vdevice->ng_count >= MAX_NGS) {
        return HAILO_OUT_OF_FW_MEMORY;
    }
    struct _hailo_configured_network_group *ng = alloc_handle(sizeof *ng);
    if (ng == NULL) {
        return HAILO_OUT_OF_HOST_MEMORY;
    }
    ng->magic = MAGIC_NG;
    ng->height = hef->height;
    ng->width = hef->width;
    ng->v = hef->v;
    vdevice->ngs[vdevice->ng_count++] = ng;
    network_groups[0] = ng;
    *number_of_network_groups = 1;
    return HAILO_SUCCESS;
}

/* ---- vstream params and creation ----------------------------------------------------- */

static void default_vstream_params(hailo_vstream_params_t *p, hailo_format_type_t type) {
    memset(p, 0, sizeof *p);
    p->user_buffer_format.type = type;
    p->user_buffer_format.order = HAILO_FORMAT_ORDER_AUTO;
    p->user_buffer_format.flags = HAILO_FORMAT_FLAGS_NONE;
    p->timeout_ms = HAILO_DEFAULT_VSTREAM_TIMEOUT_MS;
    p->queue_size = HAILO_DEFAULT_VSTREAM_QUEUE_SIZE;
}

EXPORT hailo_status hailo_make_input_vstream_params(hailo_configured_network_group ng, bool unused,
                                                    hailo_format_type_t format_type,
                                                    hailo_input_vstream_params_by_name_t *params, size_t *count) {
    (void)unused;
    if (ng == NULL || ng->magic != MAGIC_NG || count == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (*count < 1 || params == NULL) {
        *count = 1;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    copy_name(params[0].name, sizeof params[0].name, input_name(&ng->v));
    default_vstream_params(&params[0].params, format_type);
    *count = 1;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_make_output_vstream_params(hailo_configured_network_group ng, bool unused,
                                                     hailo_format_type_t format_type,
                                                     hailo_output_vstream_params_by_name_t *params, size_t *count) {
    (void)unused;
    if (ng == NULL || ng->magic != MAGIC_NG || count == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    int n = n_outputs(&ng->v);
    if (*count < (size_t)n || params == NULL) {
        *count = (size_t)n;
        return HAILO_INSUFFICIENT_BUFFER;
    }
    for (int i = 0; i < n; i++) {
        copy_name(params[i].name, sizeof params[i].name, output_name(&ng->v, is_nms(&ng->v) ? 0 : PARAMS_ORDER[i]));
        default_vstream_params(&params[i].params, format_type);
    }
    *count = (size_t)n;
    return HAILO_SUCCESS;
}

/* `nms_order`: the output's NMS order, or 0 for a frame vstream. */
static hailo_status check_user_format(const hailo_vstream_params_t *p, hailo_format_order_t nms_order) {
    if (p->user_buffer_format.type != HAILO_FORMAT_TYPE_FLOAT32) {
        return HAILO_NOT_IMPLEMENTED;
    }
    if (p->user_buffer_format.order != HAILO_FORMAT_ORDER_AUTO &&
        p->user_buffer_format.order != (nms_order != 0 ? nms_order : HAILO_FORMAT_ORDER_NHWC)) {
        return HAILO_NOT_IMPLEMENTED;
    }
    if (p->queue_size == 0 || p->queue_size > MAX_QUEUE) {
        return HAILO_INVALID_ARGUMENT;
    }
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_create_input_vstreams(hailo_configured_network_group ng,
                                                const hailo_input_vstream_params_by_name_t *params, size_t count,
                                                hailo_input_vstream *out) {
    if (ng == NULL || ng->magic != MAGIC_NG || params == NULL || out == NULL || count != 1) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (strncmp(params[0].name, input_name(&ng->v), HAILO_MAX_STREAM_NAME_SIZE) != 0) {
        return HAILO_NOT_FOUND;
    }
    /* AUTO takes the HEF's type; FLOAT32 is quantised "on the host"; the
     * HEF's own type is passed through. */
    hailo_vstream_params_t p = params[0].params;
    hailo_format_type_t user_type = p.user_buffer_format.type;
    if (user_type == HAILO_FORMAT_TYPE_AUTO || user_type == ng->v.in_type) {
        user_type = ng->v.in_type;
        p.user_buffer_format.type = HAILO_FORMAT_TYPE_FLOAT32; /* for the order and queue checks below */
    }
    hailo_status s = check_user_format(&p, 0);
    if (s != HAILO_SUCCESS) {
        return s;
    }
    struct _hailo_input_vstream *v = alloc_handle(sizeof *v);
    if (v == NULL) {
        return HAILO_OUT_OF_HOST_MEMORY;
    }
    v->magic = MAGIC_IN;
    v->ng = ng;
    v->timeout_ms = params[0].params.timeout_ms;
    v->user_type = user_type;
    ng->live_vstreams++;
    out[0] = v;
    return HAILO_SUCCESS;
}

static void release_output(struct _hailo_output_vstream *v) {
    if (v->ng->outs[v->index] == v) {
        v->ng->outs[v->index] = NULL;
    }
    v->ng->live_vstreams--;
    v->magic = 0;
    free_handle(v);
}

EXPORT hailo_status hailo_create_output_vstreams(hailo_configured_network_group ng,
                                                 const hailo_output_vstream_params_by_name_t *params, size_t count,
                                                 hailo_output_vstream *out) {
    if (ng == NULL || ng->magic != MAGIC_NG || params == NULL || out == NULL || count == 0 ||
        count > (size_t)n_outputs(&ng->v)) {
        return HAILO_INVALID_ARGUMENT;
    }
    hailo_format_order_t nms_order = is_nms(&ng->v) ? ng->v.nms_order : 0;
    for (size_t i = 0; i < count; i++) {
        int idx = output_index(&ng->v, params[i].name);
        hailo_status s = idx < 0 ? HAILO_NOT_FOUND
                         : ng->outs[idx] != NULL ? HAILO_INVALID_OPERATION
                                                 : check_user_format(&params[i].params, nms_order);
        struct _hailo_output_vstream *v = NULL;
        if (s == HAILO_SUCCESS) {
            v = alloc_handle(sizeof *v);
            s = v == NULL ? HAILO_OUT_OF_HOST_MEMORY : HAILO_SUCCESS;
        }
        if (s != HAILO_SUCCESS) {
            for (size_t k = 0; k < i; k++) {
                release_output(out[k]);
                out[k] = NULL;
            }
            return s;
        }
        v->magic = MAGIC_OUT;
        v->ng = ng;
        v->index = idx;
        v->cap = params[i].params.queue_size;
        v->timeout_ms = params[i].params.timeout_ms;
        v->reads = 0;
        ng->outs[idx] = v;
        ng->live_vstreams++;
        out[i] = v;
    }
    return HAILO_SUCCESS;
}

/* ---- vstream queries --------------------------------------------------------------------- */

static void fill_info(hailo_vstream_info_t *info, const char *name, hailo_stream_direction_t dir, uint32_t h,
                      uint32_t w, uint32_t f) {
    memset(info, 0, sizeof *info);
    copy_name(info->name, sizeof info->name, name);
    copy_name(info->network_name, sizeof info->network_name, NETWORK_NAME);
    info->direction = dir;
    info->format.type = HAILO_FORMAT_TYPE_UINT8;
    info->format.order = HAILO_FORMAT_ORDER_NHWC;
    info->format.flags = HAILO_FORMAT_FLAGS_NONE;
    info->shape.height = h;
    info->shape.width = w;
    info->shape.features = f;
    info->quant_info.qp_zp = 0.0f;
    info->quant_info.qp_scale = 1.0f;
    info->quant_info.limvals_min = 0.0f;
    info->quant_info.limvals_max = 255.0f;
}

static void fill_user_format(hailo_format_t *f, hailo_format_type_t type, hailo_format_order_t order) {
    f->type = type;
    f->order = order;
    f->flags = HAILO_FORMAT_FLAGS_NONE;
}

EXPORT hailo_status hailo_get_input_vstream_frame_size(hailo_input_vstream v, size_t *frame_size) {
    if (v == NULL || v->magic != MAGIC_IN || frame_size == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    *frame_size = input_frame_bytes(v->ng, v->user_type);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_output_vstream_frame_size(hailo_output_vstream v, size_t *frame_size) {
    if (v == NULL || v->magic != MAGIC_OUT || frame_size == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    *frame_size = output_frame_bytes(v->ng, v->index);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_input_vstream_info(hailo_input_vstream v, hailo_vstream_info_t *info) {
    if (v == NULL || v->magic != MAGIC_IN || info == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    fill_info(info, input_name(&v->ng->v), HAILO_H2D_STREAM, v->ng->height, v->ng->width, 3);
    info->format.type = v->ng->v.in_type;
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_output_vstream_info(hailo_output_vstream v, hailo_vstream_info_t *info) {
    if (v == NULL || v->magic != MAGIC_OUT || info == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    const struct variant *var = &v->ng->v;
    if (is_nms(var)) {
        fill_info(info, NMS_OUTPUT_NAME, HAILO_D2H_STREAM, 0, 0, 0);
        info->format.type = HAILO_FORMAT_TYPE_UINT16;
        info->format.order = var->nms_order;
        memset(&info->nms_shape, 0, sizeof info->nms_shape);
        info->nms_shape.number_of_classes = var->nms_classes;
        info->nms_shape.max_bboxes_per_class = var->nms_max;
        info->nms_shape.max_bboxes_total = var->nms_classes * var->nms_max;
        return HAILO_SUCCESS;
    }
    fill_info(info, OUTPUTS[v->index].name, HAILO_D2H_STREAM, v->ng->height / 4, v->ng->width / 4,
              OUTPUTS[v->index].features);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_input_vstream_user_format(hailo_input_vstream v, hailo_format_t *f) {
    if (v == NULL || v->magic != MAGIC_IN || f == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    fill_user_format(f, v->user_type, HAILO_FORMAT_ORDER_NHWC);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_get_output_vstream_user_format(hailo_output_vstream v, hailo_format_t *f) {
    if (v == NULL || v->magic != MAGIC_OUT || f == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    fill_user_format(f, HAILO_FORMAT_TYPE_FLOAT32, is_nms(&v->ng->v) ? v->ng->v.nms_order : HAILO_FORMAT_ORDER_NHWC);
    return HAILO_SUCCESS;
}

/* ---- inference ------------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int timing_on(const struct _hailo_configured_network_group *ng) {
    return ng->v.timing_d > 0;
}

/* Frames written and not yet read by every output. */
static uint32_t pending_frames(const struct _hailo_configured_network_group *ng) {
    uint32_t n = 0;
    for (int k = 0; k < N_OUTPUTS; k++) {
        if (ng->outs[k] != NULL && ng->outs[k]->count > n) {
            n = ng->outs[k]->count;
        }
    }
    return n;
}

/* Waits on g_io (held) until `until` (monotonic seconds) at the latest, in
 * slices of at most 5 ms so a device lost meanwhile is noticed. */
static void wait_io(double until) {
    double now = now_s();
    double slice = until - now;
    if (slice <= 0.0) {
        return;
    }
    if (slice > 0.005) {
        slice = 0.005;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = ts.tv_nsec + (long)(slice * 1e9);
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    int rc = pthread_cond_timedwait(&g_io_changed, &g_io, &ts);
    (void)rc; /* ETIMEDOUT or a signal: the caller re-checks its condition */
}

/* S = sum of x[i] * (1 + i mod 7). Integer inputs are summed exactly in
 * integers (the same value the double sum gives, as it stays far below 2^53),
 * floats in the same order as always; no division per element, so the
 * double's own CPU time stays small next to the timing model's chip time. */
static double weighted_sum(const void *buffer, size_t elems, hailo_format_type_t type) {
    if (type == HAILO_FORMAT_TYPE_UINT8 || type == HAILO_FORMAT_TYPE_UINT16) {
        uint64_t acc = 0;
        size_t i = 0;
        if (type == HAILO_FORMAT_TYPE_UINT8) {
            const uint8_t *p = buffer;
            for (; i + 7 <= elems; i += 7) {
                acc += (uint64_t)p[i] + 2u * p[i + 1] + 3u * p[i + 2] + 4u * p[i + 3] + 5u * p[i + 4] +
                       6u * p[i + 5] + 7u * p[i + 6];
            }
            for (; i < elems; i++) {
                acc += (uint64_t)p[i] * (1 + i % 7);
            }
        } else {
            const uint16_t *p = buffer;
            for (; i < elems; i++) {
                acc += (uint64_t)p[i] * (1 + i % 7);
            }
        }
        return (double)acc;
    }
    const float *p = buffer;
    double s = 0.0;
    unsigned w = 1;
    for (size_t i = 0; i < elems; i++) {
        s += (double)p[i] * (double)w;
        w = w == 7 ? 1 : w + 1;
    }
    return s;
}

static hailo_status write_locked(hailo_input_vstream v, const void *buffer, size_t size, double s, unsigned long n) {
    struct _hailo_configured_network_group *ng = v->ng;
    if (ng->v.record[0] != '\0') {
        FILE *f = fopen(ng->v.record, "wb");
        if (f == NULL || fwrite(buffer, 1, size, f) != size) {
            if (f != NULL) {
                fclose(f);
            }
            return HAILO_FILE_OPERATION_FAILURE;
        }
        fclose(f);
    }
    if (timing_on(ng)) {
        /* A real write blocks while the chip holds D frames, up to timeout_ms. */
        double deadline = now_s() + (double)v->timeout_ms * 1e-3;
        while (pending_frames(ng) >= (uint32_t)ng->v.timing_d) {
            if (now_s() >= deadline) {
                return HAILO_TIMEOUT;
            }
            wait_io(deadline);
            hailo_status gate = io_gate();
            if (gate != HAILO_SUCCESS) {
                return gate;
            }
        }
    } else {
        for (int k = 0; k < N_OUTPUTS; k++) {
            if (ng->outs[k] != NULL && ng->outs[k]->count == ng->outs[k]->cap) {
                return HAILO_TIMEOUT; /* a real write blocks on a full queue until timeout_ms */
            }
        }
    }
    double ready = 0.0;
    if (timing_on(ng)) {
        double now = now_s();
        ready = now + (double)ng->v.timing_l_us * 1e-6;
        double spaced = ng->last_ready + (double)ng->v.timing_t_us * 1e-6;
        if (spaced > ready) {
            ready = spaced;
        }
        ng->last_ready = ready;
    }
    for (int k = 0; k < N_OUTPUTS; k++) {
        struct _hailo_output_vstream *o = ng->outs[k];
        if (o != NULL) {
            uint32_t at = (o->head + o->count) % MAX_QUEUE;
            o->queue[at] = s;
            o->ready[at] = ready;
            o->count++;
        }
    }
    if (env_long("HAILO_DOUBLE_TIMEOUT_AT", 0) == (long)n) {
        ng->late = 1;
    }
    pthread_cond_broadcast(&g_io_changed);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_vstream_write_raw_buffer(hailo_input_vstream v, const void *buffer, size_t size) {
    if (v == NULL || v->magic != MAGIC_IN || buffer == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    unsigned long n = atomic_fetch_add(&g_writes, 1) + 1;
    hailo_status gate = io_gate();
    if (gate != HAILO_SUCCESS) {
        return gate;
    }
    if (size != input_frame_bytes(v->ng, v->user_type)) {
        return HAILO_INVALID_ARGUMENT;
    }
    /* The "computation" needs no lock: it reads only the caller's buffer. */
    double s = weighted_sum(buffer, size / type_bytes(v->user_type), v->user_type);
    pthread_mutex_lock(&g_io);
    hailo_status st = write_locked(v, buffer, size, s, n);
    pthread_mutex_unlock(&g_io);
    return st;
}

/* One NMS frame of `len` floats: the variant's boxes, or the fault due at read `n`. */
static void fill_nms(const struct variant *v, unsigned long n, float *y, size_t len) {
    memset(y, 0, len * sizeof(float));
    enum nms_fault fault = n == v->fault_at ? v->fault : FAULT_NONE;
    size_t at = 0;
    for (uint32_t c = 0; c < v->nms_classes && at < len; c++) {
        size_t count_at = at++;
        uint32_t count = 0;
        for (int i = 0; i < v->nbox && count < v->nms_max; i++) {
            if (v->boxes[i].cls == c && at + 5 <= len) {
                memcpy(&y[at], v->boxes[i].v, sizeof v->boxes[i].v);
                at += 5;
                count++;
            }
        }
        if (c == 0 && fault == FAULT_TOO_MANY) {
            count = v->nms_max + 1;
        }
        if (c == 0 && fault == FAULT_NAN) {
            const float bad[5] = {0.1f, 0.1f, 0.2f, 0.2f, __builtin_nanf("")};
            size_t first = count_at + 1;
            if (first + 5 <= len) {
                memcpy(&y[first], bad, sizeof bad);
            }
            count = count == 0 ? 1 : count;
            at = first + 5 * count;
        }
        if (c + 1 == v->nms_classes && fault == FAULT_TRUNCATED) {
            count = v->nms_max; /* claims boxes past the (shortened) end */
        }
        y[count_at] = (float)count;
    }
}

/* One BY_SCORE frame of `len` bytes (see HEF VARIANTS): the variant's boxes
 * in the order given, or the fault due at read `n`. */
static void fill_nms_by_score(const struct variant *v, unsigned long n, unsigned char *y, size_t len) {
    memset(y, 0, len);
    enum nms_fault fault = n == v->fault_at ? v->fault : FAULT_NONE;
    size_t total = (size_t)v->nms_classes * v->nms_max;
    uint16_t count = 0;
    for (int i = 0; i < v->nbox && count < total; i++) {
        size_t at = 2 + 22 * (size_t)count;
        if (at + 22 > len) {
            break;
        }
        float box[5];
        memcpy(box, v->boxes[i].v, sizeof box);
        if (count == 0 && fault == FAULT_NAN) {
            box[4] = __builtin_nanf("");
        }
        uint16_t cls = (uint16_t)v->boxes[i].cls;
        memcpy(&y[at], box, sizeof box);
        memcpy(&y[at + 20], &cls, sizeof cls);
        count++;
    }
    if (fault == FAULT_TOO_MANY) {
        count = (uint16_t)(total + 1);
    }
    if (fault == FAULT_TRUNCATED) {
        count = (uint16_t)total;
    }
    if (len >= 2) {
        memcpy(y, &count, sizeof count);
    }
}

/* Takes the oldest queued frame of `v` into `*s` (g_io held). */
static hailo_status read_locked(hailo_output_vstream v, double *s) {
    if (v->ng->late) {
        v->ng->late = 0;
        return HAILO_TIMEOUT;
    }
    if (timing_on(v->ng)) {
        /* A real read blocks until the chip has finished the frame, up to timeout_ms. */
        double deadline = now_s() + (double)v->timeout_ms * 1e-3;
        for (;;) {
            double now = now_s();
            if (v->count > 0 && now >= v->ready[v->head]) {
                break;
            }
            if (now >= deadline) {
                return HAILO_TIMEOUT;
            }
            double until = v->count > 0 && v->ready[v->head] < deadline ? v->ready[v->head] : deadline;
            wait_io(until);
            hailo_status gate = io_gate();
            if (gate != HAILO_SUCCESS) {
                return gate;
            }
        }
    } else if (v->count == 0) {
        return HAILO_TIMEOUT; /* nothing written: a real read waits timeout_ms */
    }
    *s = v->queue[v->head];
    v->head = (v->head + 1) % MAX_QUEUE;
    v->count--;
    v->reads++;
    pthread_cond_broadcast(&g_io_changed);
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_vstream_read_raw_buffer(hailo_output_vstream v, void *buffer, size_t size) {
    if (v == NULL || v->magic != MAGIC_OUT || buffer == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    hailo_status gate = io_gate();
    if (gate != HAILO_SUCCESS) {
        return gate;
    }
    if (size != output_frame_bytes(v->ng, v->index)) {
        return HAILO_INVALID_ARGUMENT;
    }
    double s = 0.0;
    pthread_mutex_lock(&g_io);
    hailo_status st = read_locked(v, &s);
    unsigned long reads = v->reads;
    pthread_mutex_unlock(&g_io);
    if (st != HAILO_SUCCESS) {
        return st;
    }
    if (is_nms(&v->ng->v) && v->ng->v.nms_order == HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE) {
        fill_nms_by_score(&v->ng->v, reads, buffer, size);
        return HAILO_SUCCESS;
    }
    if (is_nms(&v->ng->v)) {
        fill_nms(&v->ng->v, reads, buffer, size / sizeof(float));
        return HAILO_SUCCESS;
    }
    float *y = buffer;
    size_t elems = size / sizeof(float);
    double base = s * 0.001 + (double)(v->index + 1);
    for (size_t j = 0; j < elems; j++) {
        y[j] = (float)(base + (double)j * 0.001);
    }
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_clear_input_vstreams(const hailo_input_vstream *vs, size_t count) {
    if (vs == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        return lost_status();
    }
    pthread_mutex_lock(&g_io);
    hailo_status st = HAILO_SUCCESS;
    for (size_t i = 0; i < count && st == HAILO_SUCCESS; i++) {
        if (vs[i] == NULL || vs[i]->magic != MAGIC_IN) {
            st = HAILO_INVALID_ARGUMENT;
        } else {
            vs[i]->ng->late = 0;
        }
    }
    pthread_mutex_unlock(&g_io);
    return st;
}

EXPORT hailo_status hailo_clear_output_vstreams(const hailo_output_vstream *vs, size_t count) {
    if (vs == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    if (device_state() == DEV_LOST) {
        return lost_status();
    }
    pthread_mutex_lock(&g_io);
    hailo_status st = HAILO_SUCCESS;
    for (size_t i = 0; i < count && st == HAILO_SUCCESS; i++) {
        if (vs[i] == NULL || vs[i]->magic != MAGIC_OUT) {
            st = HAILO_INVALID_ARGUMENT;
        } else {
            vs[i]->head = 0;
            vs[i]->count = 0;
            vs[i]->ng->late = 0;
        }
    }
    pthread_cond_broadcast(&g_io_changed);
    pthread_mutex_unlock(&g_io);
    return st;
}

EXPORT hailo_status hailo_release_input_vstreams(const hailo_input_vstream *vs, size_t count) {
    if (vs == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < count; i++) {
        if (vs[i] == NULL || vs[i]->magic != MAGIC_IN) {
            return HAILO_INVALID_ARGUMENT;
        }
        vs[i]->ng->live_vstreams--;
        vs[i]->magic = 0;
        free_handle(vs[i]);
    }
    return HAILO_SUCCESS;
}

EXPORT hailo_status hailo_release_output_vstreams(const hailo_output_vstream *vs, size_t count) {
    if (vs == NULL) {
        return HAILO_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < count; i++) {
        if (vs[i] == NULL || vs[i]->magic != MAGIC_OUT) {
            return HAILO_INVALID_ARGUMENT;
        }
        release_output(vs[i]);
    }
    return HAILO_SUCCESS;
}

/* ---- extras for tests and the benchmark --------------------------------------------------------- */

EXPORT long hailo_double_live_handles(void) {
    return atomic_load(&g_live);
}

EXPORT int hailo_double_direct_loop(uint32_t height, uint32_t width, uint64_t iterations) {
    char text[64];
    snprintf(text, sizeof text, "HAILODOUBLE-HEF %u %u", height, width);
    hailo_hef hef = NULL;
    hailo_vdevice vdev = NULL;
    hailo_input_vstream in = NULL;
    hailo_output_vstream outs[N_OUTPUTS] = {0};
    float *x = NULL;
    float *y[N_OUTPUTS] = {0};
    size_t ysize[N_OUTPUTS] = {0};
    hailo_configure_params_t *cp = NULL;
    hailo_status s = hailo_create_hef_buffer(&hef, text, strlen(text));
    if (s != HAILO_SUCCESS) goto done;
    hailo_vdevice_params_t vp;
    hailo_init_vdevice_params(&vp);
    s = hailo_create_vdevice(&vp, &vdev);
    if (s != HAILO_SUCCESS) goto done;
    cp = malloc(sizeof *cp);
    if (cp == NULL) { s = HAILO_OUT_OF_HOST_MEMORY; goto done; }
    s = hailo_init_configure_params_by_vdevice(hef, vdev, cp);
    if (s != HAILO_SUCCESS) goto done;
    hailo_configured_network_group ng = NULL;
    size_t ng_count = 1;
    s = hailo_configure_vdevice(vdev, hef, cp, &ng, &ng_count);
    if (s != HAILO_SUCCESS) goto done;
    hailo_input_vstream_params_by_name_t ip;
    size_t ic = 1;
    s = hailo_make_input_vstream_params(ng, false, HAILO_FORMAT_TYPE_FLOAT32, &ip, &ic);
    if (s != HAILO_SUCCESS) goto done;
    hailo_output_vstream_params_by_name_t op[N_OUTPUTS];
    size_t oc = N_OUTPUTS;
    s = hailo_make_output_vstream_params(ng, false, HAILO_FORMAT_TYPE_FLOAT32, op, &oc);
    if (s != HAILO_SUCCESS) goto done;
    s = hailo_create_input_vstreams(ng, &ip, 1, &in);
    if (s != HAILO_SUCCESS) goto done;
    s = hailo_create_output_vstreams(ng, op, oc, outs);
    if (s != HAILO_SUCCESS) goto done;
    size_t xsize = 0;
    hailo_get_input_vstream_frame_size(in, &xsize);
    x = malloc(xsize);
    if (x == NULL) { s = HAILO_OUT_OF_HOST_MEMORY; goto done; }
    for (size_t i = 0; i < xsize / sizeof(float); i++) {
        x[i] = (float)(i % 255) / 255.0f;
    }
    for (size_t k = 0; k < oc; k++) {
        hailo_get_output_vstream_frame_size(outs[k], &ysize[k]);
        y[k] = malloc(ysize[k]);
        if (y[k] == NULL) { s = HAILO_OUT_OF_HOST_MEMORY; goto done; }
    }
    for (uint64_t it = 0; it < iterations; it++) {
        s = hailo_vstream_write_raw_buffer(in, x, xsize);
        if (s != HAILO_SUCCESS) goto done;
        for (size_t k = 0; k < oc; k++) {
            s = hailo_vstream_read_raw_buffer(outs[k], y[k], ysize[k]);
            if (s != HAILO_SUCCESS) goto done;
        }
    }
done:
    for (size_t k = 0; k < N_OUTPUTS; k++) {
        free(y[k]);
    }
    free(x);
    free(cp);
    if (outs[0] != NULL) hailo_release_output_vstreams(outs, N_OUTPUTS);
    if (in != NULL) hailo_release_input_vstreams(&in, 1);
    if (vdev != NULL) hailo_release_vdevice(vdev);
    if (hef != NULL) hailo_release_hef(hef);
    return (int)s;
}
