/*
 * hailort_subset.h: the part of HailoRT's C API that spark-edge uses.
 *
 * Used by hailo-sys/build.rs when no installed `hailo/hailort.h` is found
 * (cross builds, CI, developer machines without the Hailo SDK), and by the
 * test double in tests/hailo-double/. Names, enum values and struct layouts
 * follow HailoRT 4.21-4.23 (the Hailo-8 line; these three releases share
 * layouts). Earlier 4.x releases (4.18, 4.20) lay some of these structs out
 * differently, which is why hailo-sys refuses them after loading.
 *
 * Rules for editing this file:
 *  - Declare only what the Rust side calls or what those calls' structs
 *    contain. Every struct here is passed by pointer to the real library, so
 *    a field out of place is memory corruption, not a compile error.
 *  - Keep anonymous unions where HailoRT has them: bindgen names them by
 *    position, and the Rust code must compile against bindings generated from
 *    either this file or the installed header.
 *  - Handles are opaque pointers; no handle struct is ever defined here.
 */
#ifndef SPARK_HAILORT_SUBSET_H
#define SPARK_HAILORT_SUBSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants ---------------------------------------------------------- */

#define HAILO_MAX_ENUM (INT_MAX)
#define HAILO_MAX_NAME_SIZE (128)
#define HAILO_MAX_STREAM_NAME_SIZE (HAILO_MAX_NAME_SIZE)
#define HAILO_MAX_BOARD_NAME_LENGTH (32)
#define HAILO_MAX_DEVICE_ID_LENGTH (32)
#define HAILO_MAX_SERIAL_NUMBER_LENGTH (16)
#define HAILO_MAX_PART_NUMBER_LENGTH (16)
#define HAILO_MAX_PRODUCT_NAME_LENGTH (42)
#define HAILO_MAX_STREAMS_COUNT (40)
#define HAILO_DEFAULT_BATCH_SIZE (0)
#define HAILO_MAX_NETWORK_GROUPS (8)
#define HAILO_MAX_NETWORK_GROUP_NAME_SIZE (HAILO_MAX_NAME_SIZE)
/* A network name is "<network group>/<network>". */
#define HAILO_MAX_NETWORK_NAME_SIZE (HAILO_MAX_NETWORK_GROUP_NAME_SIZE + 1 + HAILO_MAX_NAME_SIZE)
#define HAILO_MAX_NETWORKS_IN_NETWORK_GROUP (8)
#define HAILO_DEFAULT_VSTREAM_QUEUE_SIZE (2)
#define HAILO_DEFAULT_VSTREAM_TIMEOUT_MS (10000)
#define HAILO_DEFAULT_DEVICE_COUNT (1)

/* A HailoRT structure with no members still occupies one byte in C. */
#define HAILO_SUBSET_EMPTY_STRUCT uint8_t reserved;

typedef float float32_t;
typedef double float64_t;

/* ---- status codes -------------------------------------------------------- */

typedef enum {
    HAILO_SUCCESS = 0,
    HAILO_UNINITIALIZED = 1,
    HAILO_INVALID_ARGUMENT = 2,
    HAILO_OUT_OF_HOST_MEMORY = 3,
    HAILO_TIMEOUT = 4,
    HAILO_INSUFFICIENT_BUFFER = 5,
    HAILO_INVALID_OPERATION = 6,
    HAILO_NOT_IMPLEMENTED = 7,
    HAILO_INTERNAL_FAILURE = 8,
    HAILO_DATA_ALIGNMENT_FAILURE = 9,
    HAILO_CHUNK_TOO_LARGE = 10,
    HAILO_INVALID_LOGGER_LEVEL = 11,
    HAILO_CLOSE_FAILURE = 12,
    HAILO_OPEN_FILE_FAILURE = 13,
    HAILO_FILE_OPERATION_FAILURE = 14,
    HAILO_UNSUPPORTED_CONTROL_PROTOCOL_VERSION = 15,
    HAILO_UNSUPPORTED_FW_VERSION = 16,
    HAILO_INVALID_CONTROL_RESPONSE = 17,
    HAILO_FW_CONTROL_FAILURE = 18,
    HAILO_ETH_FAILURE = 19,
    HAILO_ETH_INTERFACE_NOT_FOUND = 20,
    HAILO_ETH_RECV_FAILURE = 21,
    HAILO_ETH_SEND_FAILURE = 22,
    HAILO_INVALID_FIRMWARE = 23,
    HAILO_INVALID_CONTEXT_COUNT = 24,
    HAILO_INVALID_FRAME = 25,
    HAILO_INVALID_HEF = 26,
    HAILO_PCIE_NOT_SUPPORTED_ON_PLATFORM = 27,
    HAILO_INTERRUPTED_BY_SIGNAL = 28,
    HAILO_START_VDMA_CHANNEL_FAIL = 29,
    HAILO_SYNC_VDMA_BUFFER_FAIL = 30,
    HAILO_STOP_VDMA_CHANNEL_FAIL = 31,
    HAILO_CLOSE_VDMA_CHANNEL_FAIL = 32,
    HAILO_ATR_TABLES_CONF_VALIDATION_FAIL = 33,
    HAILO_EVENT_CREATE_FAIL = 34,
    HAILO_READ_EVENT_FAIL = 35,
    HAILO_DRIVER_OPERATION_FAILED = 36, /* older headers: HAILO_DRIVER_FAIL */
    HAILO_INVALID_FIRMWARE_MAGIC = 37,
    HAILO_INVALID_FIRMWARE_CODE_SIZE = 38,
    HAILO_INVALID_KEY_CERTIFICATE_SIZE = 39,
    HAILO_INVALID_CONTENT_CERTIFICATE_SIZE = 40,
    HAILO_MISMATCHING_FIRMWARE_BUFFER_SIZES = 41,
    HAILO_INVALID_FIRMWARE_CPU_ID = 42,
    HAILO_CONTROL_RESPONSE_MD5_MISMATCH = 43,
    HAILO_GET_CONTROL_RESPONSE_FAIL = 44,
    HAILO_GET_D2H_EVENT_MESSAGE_FAIL = 45,
    HAILO_MUTEX_INIT_FAIL = 46,
    HAILO_OUT_OF_DESCRIPTORS = 47,
    HAILO_UNSUPPORTED_OPCODE = 48,
    HAILO_USER_MODE_RATE_LIMITER_NOT_SUPPORTED = 49,
    HAILO_RATE_LIMIT_MAXIMUM_BANDWIDTH_EXCEEDED = 50,
    HAILO_ANSI_TO_UTF16_CONVERSION_FAILED = 51,
    HAILO_UTF16_TO_ANSI_CONVERSION_FAILED = 52,
    HAILO_UNEXPECTED_INTERFACE_INFO_FAILURE = 53,
    HAILO_UNEXPECTED_ARP_TABLE_FAILURE = 54,
    HAILO_MAC_ADDRESS_NOT_FOUND = 55,
    HAILO_NO_IPV4_INTERFACES_FOUND = 56,
    HAILO_SHUTDOWN_EVENT_SIGNALED = 57,
    HAILO_THREAD_ALREADY_ACTIVATED = 58,
    HAILO_THREAD_NOT_ACTIVATED = 59,
    HAILO_THREAD_NOT_JOINABLE = 60,
    HAILO_NOT_FOUND = 61,
    HAILO_COMMUNICATION_CLOSED = 62,
    HAILO_STREAM_ABORT = 63,
    HAILO_DRIVER_NOT_INSTALLED = 64, /* older headers: HAILO_PCIE_DRIVER_NOT_INSTALLED */
    HAILO_NOT_AVAILABLE = 65,
    HAILO_TRAFFIC_CONTROL_FAILURE = 66,
    HAILO_INVALID_SECOND_STAGE = 67,
    HAILO_INVALID_PIPELINE = 68,
    HAILO_NETWORK_GROUP_NOT_ACTIVATED = 69,
    HAILO_VSTREAM_PIPELINE_NOT_ACTIVATED = 70,
    HAILO_OUT_OF_FW_MEMORY = 71,
    HAILO_STREAM_NOT_ACTIVATED = 72,
    HAILO_DEVICE_IN_USE = 73,
    HAILO_OUT_OF_PHYSICAL_DEVICES = 74,
    HAILO_INVALID_DEVICE_ARCHITECTURE = 75,
    HAILO_INVALID_DRIVER_VERSION = 76,
    HAILO_RPC_FAILED = 77,
    HAILO_INVALID_SERVICE_VERSION = 78,
    HAILO_NOT_SUPPORTED = 79,
    HAILO_NMS_BURST_INVALID_DATA = 80,
    HAILO_OUT_OF_HOST_CMA_MEMORY = 81,
    HAILO_QUEUE_IS_FULL = 82,
    HAILO_DMA_MAPPING_ALREADY_EXISTS = 83,
    HAILO_CANT_MEET_BUFFER_REQUIREMENTS = 84,
    HAILO_DRIVER_INVALID_RESPONSE = 85,
    HAILO_DRIVER_INVALID_IOCTL = 86,
    HAILO_DRIVER_TIMEOUT = 87,
    HAILO_DRIVER_INTERRUPTED = 88,
    HAILO_CONNECTION_REFUSED = 89,
    HAILO_DRIVER_WAIT_CANCELED = 90,
    HAILO_HEF_FILE_CORRUPTED = 91,
    HAILO_HEF_NOT_SUPPORTED = 92,
    HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE = 93,
    HAILO_INVALID_HEF_USE = 94,
    HAILO_OPERATION_ABORTED = 95,
    HAILO_DEVICE_NOT_CONNECTED = 96,
    HAILO_DEVICE_TEMPORARILY_UNAVAILABLE = 97,
    HAILO_STATUS_COUNT,
    HAILO_STATUS_MAX_ENUM = HAILO_MAX_ENUM
} hailo_status;

/* ---- library version and handles ---------------------------------------- */

typedef struct {
    uint32_t major;
    uint32_t minor;
    uint32_t revision;
} hailo_version_t;

typedef struct _hailo_device *hailo_device;
typedef struct _hailo_vdevice *hailo_vdevice;
typedef struct _hailo_hef *hailo_hef;
typedef struct _hailo_configured_network_group *hailo_configured_network_group;
typedef struct _hailo_input_vstream *hailo_input_vstream;
typedef struct _hailo_output_vstream *hailo_output_vstream;

/* Reserved by HailoRT for future scan options; only NULL is accepted. */
typedef struct _hailo_scan_devices_params_t hailo_scan_devices_params_t;

/* ---- devices -------------------------------------------------------------- */

/* PCIe BDF ("0000:01:00.0") or IP address, NUL-terminated. */
typedef struct {
    char id[HAILO_MAX_DEVICE_ID_LENGTH];
} hailo_device_id_t;

typedef enum hailo_scheduling_algorithm_e {
    HAILO_SCHEDULING_ALGORITHM_NONE = 0,
    HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN,
    HAILO_SCHEDULING_ALGORITHM_MAX_ENUM = HAILO_MAX_ENUM
} hailo_scheduling_algorithm_t;

typedef struct {
    uint32_t device_count;
    hailo_device_id_t *device_ids;
    hailo_scheduling_algorithm_t scheduling_algorithm;
    const char *group_id;
    bool multi_process_service;
} hailo_vdevice_params_t;

typedef enum hailo_device_architecture_e {
    HAILO_ARCH_HAILO8_A0 = 0,
    HAILO_ARCH_HAILO8,
    HAILO_ARCH_HAILO8L,
    HAILO_ARCH_HAILO15H,
    HAILO_ARCH_HAILO15L,
    HAILO_ARCH_HAILO15M,
    HAILO_ARCH_HAILO10H,
    HAILO_ARCH_MARS,
    HAILO_ARCH_MAX_ENUM = HAILO_MAX_ENUM
} hailo_device_architecture_t;

typedef struct {
    uint32_t major;
    uint32_t minor;
    uint32_t revision;
} hailo_firmware_version_t;

/* Strings in this struct are NOT NUL-terminated: use the *_length fields. */
typedef struct {
    uint32_t protocol_version;
    hailo_firmware_version_t fw_version;
    uint32_t logger_version;
    uint8_t board_name_length;
    char board_name[HAILO_MAX_BOARD_NAME_LENGTH];
    bool is_release;
    bool extended_context_switch_buffer;
    bool extended_fw_check;
    hailo_device_architecture_t device_architecture;
    uint8_t serial_number_length;
    char serial_number[HAILO_MAX_SERIAL_NUMBER_LENGTH];
    uint8_t part_number_length;
    char part_number[HAILO_MAX_PART_NUMBER_LENGTH];
    uint8_t product_name_length;
    char product_name[HAILO_MAX_PRODUCT_NAME_LENGTH];
} hailo_device_identity_t;

/* Two on-die sensors, degrees Celsius. */
typedef struct {
    float32_t ts0_temperature;
    float32_t ts1_temperature;
    uint16_t sample_count;
} hailo_chip_temperature_info_t;

/* ---- data formats ---------------------------------------------------------- */

typedef enum {
    HAILO_FORMAT_TYPE_AUTO = 0,
    HAILO_FORMAT_TYPE_UINT8 = 1,
    HAILO_FORMAT_TYPE_UINT16 = 2,
    HAILO_FORMAT_TYPE_FLOAT32 = 3,
    HAILO_FORMAT_TYPE_MAX_ENUM = HAILO_MAX_ENUM
} hailo_format_type_t;

typedef enum {
    HAILO_FORMAT_ORDER_AUTO = 0,
    HAILO_FORMAT_ORDER_NHWC = 1,
    HAILO_FORMAT_ORDER_NHCW = 2,
    HAILO_FORMAT_ORDER_FCR = 3,
    HAILO_FORMAT_ORDER_F8CR = 4,
    HAILO_FORMAT_ORDER_NHW = 5,
    HAILO_FORMAT_ORDER_NC = 6,
    HAILO_FORMAT_ORDER_BAYER_RGB = 7,
    HAILO_FORMAT_ORDER_12_BIT_BAYER_RGB = 8,
    HAILO_FORMAT_ORDER_HAILO_NMS = 9,
    HAILO_FORMAT_ORDER_RGB888 = 10,
    HAILO_FORMAT_ORDER_NCHW = 11,
    HAILO_FORMAT_ORDER_YUY2 = 12,
    HAILO_FORMAT_ORDER_NV12 = 13,
    HAILO_FORMAT_ORDER_NV21 = 14,
    HAILO_FORMAT_ORDER_HAILO_YYUV = 15,
    HAILO_FORMAT_ORDER_HAILO_YYVU = 16,
    HAILO_FORMAT_ORDER_RGB4 = 17,
    HAILO_FORMAT_ORDER_I420 = 18,
    HAILO_FORMAT_ORDER_HAILO_YYYYUV = 19,
    HAILO_FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK = 20,
    HAILO_FORMAT_ORDER_HAILO_NMS_ON_CHIP = 21,
    HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS = 22,
    HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE = 23,
    HAILO_FORMAT_ORDER_MAX_ENUM = HAILO_MAX_ENUM
} hailo_format_order_t;

typedef enum {
    HAILO_FORMAT_FLAGS_NONE = 0,
    HAILO_FORMAT_FLAGS_QUANTIZED = 1 << 0, /* deprecated and ignored by HailoRT */
    HAILO_FORMAT_FLAGS_TRANSPOSED = 1 << 1,
    HAILO_FORMAT_FLAGS_MAX_ENUM = HAILO_MAX_ENUM
} hailo_format_flags_t;

typedef struct {
    hailo_format_type_t type;
    hailo_format_order_t order;
    hailo_format_flags_t flags;
} hailo_format_t;

/* De-quantised value = (raw - qp_zp) * qp_scale. */
typedef struct {
    float32_t qp_zp;
    float32_t qp_scale;
    float32_t limvals_min;
    float32_t limvals_max;
} hailo_quant_info_t;

typedef struct {
    uint32_t height;
    uint32_t width;
    uint32_t features;
} hailo_3d_image_shape_t;

typedef struct {
    uint32_t number_of_classes;
    uint32_t max_bboxes_per_class;
    uint32_t max_bboxes_total;
    uint32_t max_accumulated_mask_size;
} hailo_nms_shape_t;

/* ---- streams and configure parameters --------------------------------------- */

typedef enum {
    HAILO_H2D_STREAM = 0,
    HAILO_D2H_STREAM = 1,
    HAILO_STREAM_DIRECTION_MAX_ENUM = HAILO_MAX_ENUM
} hailo_stream_direction_t;

typedef enum {
    HAILO_STREAM_FLAGS_NONE = 0,
    HAILO_STREAM_FLAGS_ASYNC = 1 << 0,
    HAILO_STREAM_FLAGS_MAX_ENUM = HAILO_MAX_ENUM
} hailo_stream_flags_t;

typedef enum {
    HAILO_STREAM_INTERFACE_PCIE = 0,
    HAILO_STREAM_INTERFACE_ETH,
    HAILO_STREAM_INTERFACE_MIPI,
    HAILO_STREAM_INTERFACE_INTEGRATED,
    HAILO_STREAM_INTERFACE_MAX_ENUM = HAILO_MAX_ENUM
} hailo_stream_interface_t;

typedef struct { HAILO_SUBSET_EMPTY_STRUCT } hailo_pcie_input_stream_params_t;
typedef struct { HAILO_SUBSET_EMPTY_STRUCT } hailo_pcie_output_stream_params_t;
typedef struct { HAILO_SUBSET_EMPTY_STRUCT } hailo_integrated_input_stream_params_t;
typedef struct { HAILO_SUBSET_EMPTY_STRUCT } hailo_integrated_output_stream_params_t;

typedef struct {
    hailo_stream_interface_t stream_interface;
    hailo_stream_direction_t direction;
    hailo_stream_flags_t flags;
    union {
        hailo_pcie_input_stream_params_t pcie_input_params;
        hailo_integrated_input_stream_params_t integrated_input_params;
        hailo_pcie_output_stream_params_t pcie_output_params;
        hailo_integrated_output_stream_params_t integrated_output_params;
    };
} hailo_stream_parameters_t;

typedef struct {
    char name[HAILO_MAX_STREAM_NAME_SIZE];
    hailo_stream_parameters_t stream_params;
} hailo_stream_parameters_by_name_t;

typedef enum {
    HAILO_POWER_MODE_PERFORMANCE = 0,
    HAILO_POWER_MODE_ULTRA_PERFORMANCE = 1,
    HAILO_POWER_MODE_MAX_ENUM = HAILO_MAX_ENUM
} hailo_power_mode_t;

typedef enum {
    HAILO_LATENCY_NONE = 0,
    HAILO_LATENCY_MEASURE = 1 << 0,
    HAILO_LATENCY_CLEAR_AFTER_GET = 1 << 1,
    HAILO_LATENCY_MAX_ENUM = HAILO_MAX_ENUM
} hailo_latency_measurement_flags_t;

typedef struct {
    uint16_t batch_size;
} hailo_network_parameters_t;

typedef struct {
    char name[HAILO_MAX_NETWORK_NAME_SIZE];
    hailo_network_parameters_t network_params;
} hailo_network_parameters_by_name_t;

typedef struct {
    char name[HAILO_MAX_NETWORK_GROUP_NAME_SIZE];
    uint16_t batch_size;
    hailo_power_mode_t power_mode;
    hailo_latency_measurement_flags_t latency;
    bool enable_kv_cache;
    size_t stream_params_by_name_count;
    hailo_stream_parameters_by_name_t stream_params_by_name[HAILO_MAX_STREAMS_COUNT];
    size_t network_params_by_name_count;
    hailo_network_parameters_by_name_t network_params_by_name[HAILO_MAX_NETWORKS_IN_NETWORK_GROUP];
} hailo_configure_network_group_params_t;

/* Large (tens of KiB): keep it on the heap. */
typedef struct {
    size_t network_group_params_count;
    hailo_configure_network_group_params_t network_group_params[HAILO_MAX_NETWORK_GROUPS];
} hailo_configure_params_t;

/* ---- virtual streams ------------------------------------------------------------ */

typedef enum {
    HAILO_VSTREAM_STATS_NONE = 0,
    HAILO_VSTREAM_STATS_MEASURE_FPS = 1 << 0,
    HAILO_VSTREAM_STATS_MEASURE_LATENCY = 1 << 1,
    HAILO_VSTREAM_STATS_MAX_ENUM = HAILO_MAX_ENUM
} hailo_vstream_stats_flags_t;

typedef enum {
    HAILO_PIPELINE_ELEM_STATS_NONE = 0,
    HAILO_PIPELINE_ELEM_STATS_MEASURE_FPS = 1 << 0,
    HAILO_PIPELINE_ELEM_STATS_MEASURE_LATENCY = 1 << 1,
    HAILO_PIPELINE_ELEM_STATS_MEASURE_QUEUE_SIZE = 1 << 2,
    HAILO_PIPELINE_ELEM_STATS_MAX_ENUM = HAILO_MAX_ENUM
} hailo_pipeline_elem_stats_flags_t;

typedef struct {
    hailo_format_t user_buffer_format;
    uint32_t timeout_ms;
    uint32_t queue_size;
    hailo_vstream_stats_flags_t vstream_stats_flags;
    hailo_pipeline_elem_stats_flags_t pipeline_elements_stats_flags;
} hailo_vstream_params_t;

typedef struct {
    char name[HAILO_MAX_STREAM_NAME_SIZE];
    hailo_vstream_params_t params;
} hailo_input_vstream_params_by_name_t;

typedef struct {
    char name[HAILO_MAX_STREAM_NAME_SIZE];
    hailo_vstream_params_t params;
} hailo_output_vstream_params_by_name_t;

typedef struct {
    char name[HAILO_MAX_STREAM_NAME_SIZE];
    char network_name[HAILO_MAX_NETWORK_NAME_SIZE];
    hailo_stream_direction_t direction;
    hailo_format_t format;
    union {
        hailo_3d_image_shape_t shape;  /* frames */
        hailo_nms_shape_t nms_shape;   /* only for the NMS format orders */
    };
    hailo_quant_info_t quant_info;
} hailo_vstream_info_t;

typedef struct {
    char name[HAILO_MAX_STREAM_NAME_SIZE];
} hailo_layer_name_t;

/* ---- functions ---------------------------------------------------------------------- */

hailo_status hailo_get_library_version(hailo_version_t *version);
const char *hailo_get_status_message(hailo_status status);

hailo_status hailo_scan_devices(hailo_scan_devices_params_t *params, hailo_device_id_t *device_ids,
    size_t *device_ids_length);
hailo_status hailo_identify(hailo_device device, hailo_device_identity_t *device_identity);
hailo_status hailo_get_chip_temperature(hailo_device device, hailo_chip_temperature_info_t *temp_info);

hailo_status hailo_init_vdevice_params(hailo_vdevice_params_t *params);
hailo_status hailo_create_vdevice(hailo_vdevice_params_t *params, hailo_vdevice *vdevice);
hailo_status hailo_configure_vdevice(hailo_vdevice vdevice, hailo_hef hef, hailo_configure_params_t *params,
    hailo_configured_network_group *network_groups, size_t *number_of_network_groups);
/* The returned devices belong to the vdevice: never release them. */
hailo_status hailo_get_physical_devices(hailo_vdevice vdevice, hailo_device *devices, size_t *number_of_devices);
/* Also frees the network groups configured on it. */
hailo_status hailo_release_vdevice(hailo_vdevice vdevice);

hailo_status hailo_create_hef_file(hailo_hef *hef, const char *file_name);
hailo_status hailo_create_hef_buffer(hailo_hef *hef, const void *buffer, size_t size);
hailo_status hailo_release_hef(hailo_hef hef);
hailo_status hailo_hef_get_sorted_output_names(hailo_hef hef, const char *network_group_name,
    hailo_layer_name_t *sorted_output_names, size_t *sorted_output_names_count);

hailo_status hailo_init_configure_params_by_vdevice(hailo_hef hef, hailo_vdevice vdevice,
    hailo_configure_params_t *params);

hailo_status hailo_make_input_vstream_params(hailo_configured_network_group network_group, bool unused,
    hailo_format_type_t format_type, hailo_input_vstream_params_by_name_t *input_params, size_t *input_params_count);
hailo_status hailo_make_output_vstream_params(hailo_configured_network_group network_group, bool unused,
    hailo_format_type_t format_type, hailo_output_vstream_params_by_name_t *output_params,
    size_t *output_params_count);
hailo_status hailo_create_input_vstreams(hailo_configured_network_group configured_network_group,
    const hailo_input_vstream_params_by_name_t *inputs_params, size_t inputs_count,
    hailo_input_vstream *input_vstreams);
hailo_status hailo_create_output_vstreams(hailo_configured_network_group configured_network_group,
    const hailo_output_vstream_params_by_name_t *outputs_params, size_t outputs_count,
    hailo_output_vstream *output_vstreams);

hailo_status hailo_get_input_vstream_frame_size(hailo_input_vstream input_vstream, size_t *frame_size);
hailo_status hailo_get_output_vstream_frame_size(hailo_output_vstream output_vstream, size_t *frame_size);
hailo_status hailo_get_input_vstream_info(hailo_input_vstream input_vstream, hailo_vstream_info_t *vstream_info);
hailo_status hailo_get_output_vstream_info(hailo_output_vstream output_vstream, hailo_vstream_info_t *vstream_info);
hailo_status hailo_get_input_vstream_user_format(hailo_input_vstream input_vstream, hailo_format_t *user_buffer_format);
hailo_status hailo_get_output_vstream_user_format(hailo_output_vstream output_vstream,
    hailo_format_t *user_buffer_format);

hailo_status hailo_vstream_write_raw_buffer(hailo_input_vstream input_vstream, const void *buffer, size_t buffer_size);
hailo_status hailo_vstream_read_raw_buffer(hailo_output_vstream output_vstream, void *buffer, size_t buffer_size);
hailo_status hailo_clear_input_vstreams(const hailo_input_vstream *input_vstreams, size_t inputs_count);
hailo_status hailo_clear_output_vstreams(const hailo_output_vstream *output_vstreams, size_t outputs_count);
hailo_status hailo_release_input_vstreams(const hailo_input_vstream *input_vstreams, size_t inputs_count);
hailo_status hailo_release_output_vstreams(const hailo_output_vstream *output_vstreams, size_t outputs_count);

#ifdef __cplusplus
}
#endif

#endif /* SPARK_HAILORT_SUBSET_H */
