/* The C ABI of native Pliers plugins loaded from a shared library (version 1).
 *
 * A library exports one function, `pliers_plugin_entry_v1`, returning a static
 * descriptor. The engine checks `abi_version`, calls `create` once with the plugin's
 * config (JSON text), then `process` for every triggering event, possibly from several
 * threads at once (a plugin that is not thread-safe locks inside), and `destroy` at the
 * end. Strings passed in are UTF-8 JSON, valid only during the call. `process` answers by
 * calling `respond(out, json, length)` once with a PluginResult
 * ({"success": bool, "error"?: string, "errorType"?: string, "metadata"?: object,
 *   "generatedEvents"?: [{"aggregateId", "type", "aggregateType", "payload", "metadata"?}]})
 * and returns 0; a non-zero return without a response is a failure of type "plugin_error".
 * The event is the spec's BaseEvent; the context is {"previousResults", "correlationId",
 * "traceId", "attempt", "config", "deadlineMs"} (deadlineMs: milliseconds left).
 */
#ifndef PLIERS_PLUGIN_ABI_H
#define PLIERS_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PLIERS_PLUGIN_ABI_VERSION 1

typedef void (*pliers_respond_fn)(void* out, const char* json, size_t length);

typedef struct pliers_plugin_v1 {
  uint32_t abi_version; /* PLIERS_PLUGIN_ABI_VERSION */
  const char* id;
  const char* name;
  const char* version;
  int64_t priority;
  const char* event_types; /* comma-separated type patterns it runs on; NULL = every type */
  void* (*create)(const char* config_json, size_t length);
  int (*process)(void* instance, const char* event_json, size_t event_length, const char* context_json,
                 size_t context_length, pliers_respond_fn respond, void* out);
  void (*on_enable)(void* instance);  /* may be NULL */
  void (*on_disable)(void* instance); /* may be NULL */
  void (*destroy)(void* instance);    /* may be NULL */
} pliers_plugin_v1;

const pliers_plugin_v1* pliers_plugin_entry_v1(void);

#ifdef __cplusplus
}
#endif

#endif
