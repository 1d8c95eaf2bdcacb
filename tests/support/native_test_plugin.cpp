/* A native plugin written against the C ABI only (no C++ in its interface), through include/pliers/plugin_abi.h, for the tests: it
 * answers success with the event's type echoed in its metadata, and for events whose
 * payload contains "\"fail\":true" a failure of type "native_refused". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pliers/plugin_abi.h"

static void* create(const char* config, size_t length) {
  (void)config;
  (void)length;
  static int instance = 1;
  return &instance;
}

static int process(void* instance, const char* event_json, size_t event_length, const char* context_json,
                   size_t context_length, pliers_respond_fn respond, void* out) {
  (void)instance;
  (void)context_json;
  (void)context_length;
  char* ev = (char*)malloc(event_length + 1);
  if (!ev) return 1;
  memcpy(ev, event_json, event_length);
  ev[event_length] = 0;
  char answer[512];
  if (strstr(ev, "\"fail\":true")) {
    snprintf(answer, sizeof answer, "{\"success\":false,\"errorType\":\"native_refused\",\"error\":\"asked to fail\"}");
  } else {
    const char* type = strstr(ev, "\"type\":\"");
    char t[128] = "?";
    if (type) {
      type += 8;
      size_t n = 0;
      while (type[n] && type[n] != '"' && n < sizeof t - 1) {
        t[n] = type[n];
        ++n;
      }
      t[n] = 0;
    }
    snprintf(answer, sizeof answer, "{\"success\":true,\"metadata\":{\"nativeSaw\":\"%s\"}}", t);
  }
  free(ev);
  respond(out, answer, strlen(answer));
  return 0;
}

static const pliers_plugin_v1 descriptor = {
    PLIERS_PLUGIN_ABI_VERSION, "native-echo", "Native echo", "1.2.3", 50, "form.*", create, process, NULL, NULL, NULL};

const pliers_plugin_v1* pliers_plugin_entry_v1(void) { return &descriptor; }
