// pliers-routing-bench: the router's costs (issue 6).
//   matching    events/s through event_router::process_batch with 1,000 rules and no-op
//               targets (each rule pinned to its own event type, plus 10 rules tested on
//               every event: a payload regex, a metadata equality, a type regex...); then
//               1,000 rules on one payload field each: `equals` (indexed by value),
//               `contains` and `regex` (prefiltered by an RE2::Set), `suffix` (every rule
//               tested on every event). Target: >= 50,000 events/s.
//   webhooks    signed webhook deliveries/s to a keep-alive HTTP endpoint on loopback in
//               this process (concurrency = routes.max_concurrent_deliveries). Target:
//               >= 5,000 deliveries/s.
// The store is memory: (dead letters only; nothing fails here). Run:
//   build/<preset>/pliers-routing-bench [--events N] [--rules N] [--concurrency N] [--only SCENARIO]
#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <iostream>

#include "core/uuid.hpp"
#include "loopback_endpoint.hpp"
#include "process/event_router.hpp"
#include "process/route_targets.hpp"

namespace json = boost::json;
using namespace pliers;

namespace {

class noop_target final : public route_target {
 public:
  std::string kind() const override { return "noop"; }
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(1000); }
  delivery_outcome deliver(const event&, const delivery_context&) override {
    ++count;
    delivery_outcome o;
    o.success = true;
    return o;
  }
  static inline std::atomic<std::uint64_t> count{0};
};

std::vector<event> make_events(int n, int types) {
  std::vector<event> out;
  for (int i = 0; i < n; ++i) {
    event e;
    e.id = new_uuid_v4();
    e.type = "order.t" + std::to_string(i % types);
    e.aggregate_id = "order-" + std::to_string(i % 997);
    e.aggregate_type = "order";
    e.position = log_position(i + 1);
    e.sequence = sequence_number(1);
    e.time = default_clock().now();
    e.metadata = {{"sourceSystem", "bench"}, {"sourceVersion", "1"}, {"region", "eu"}};
    e.payload = {{"total", i}, {"customer", "c-" + std::to_string(i % 1000) + "!"}, {"note", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"}};
    out.push_back(std::move(e));
  }
  return out;
}

double run(event_router& router, const std::vector<event>& events, std::size_t batch) {
  std::vector<const event*> ptrs;
  for (const auto& e : events) ptrs.push_back(&e);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < ptrs.size(); i += batch) {
    auto n = std::min(batch, ptrs.size() - i);
    auto ok = router.process_batch(std::span<const event* const>(ptrs.data() + i, n));
    if (!ok) throw std::runtime_error(ok.error().message);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pliers-routing-bench"};
  int events = 200000, rules = 1000, webhook_events = 20000;
  std::size_t concurrency = 32;
  std::string only;
  app.add_option("--events", events, "events through the matcher");
  app.add_option("--rules", rules, "pinned rules");
  app.add_option("--webhook-events", webhook_events, "webhook deliveries");
  app.add_option("--concurrency", concurrency, "delivery threads");
  app.add_option("--only", only, "one scenario: pinned, equals, contains, regex, suffix or webhooks");
  CLI11_PARSE(app, argc, argv);

  auto st = open_store("memory:");
  if (!st) throw std::runtime_error(st.error().message);
  auto& store = **st;
  retry_engine retries(store, default_clock(), {});
  auto wanted = [&](const char* scenario) { return only.empty() || only == scenario; };
  if (wanted("pinned")) {
    auto make = [](const std::string& type, const json::object&, const std::string& field)
        -> result<std::shared_ptr<route_target>> {
      if (type != "noop") return error::invalid(field + ".type", "noop only");
      return std::shared_ptr<route_target>(std::make_shared<noop_target>());
    };
    event_router router(store, default_clock(), retries, make, {.max_concurrent_deliveries = concurrency});
    for (int i = 0; i < rules; ++i) {
      json::object r{{"id", "r" + std::to_string(i)},
                     {"conditions", json::array{json::object{{"type", "event_type"}, {"operator", "equals"},
                                                              {"value", "order.t" + std::to_string(i)}},
                                                 json::object{{"type", "payload"}, {"field", "total"}, {"operator", "in"},
                                                              {"value", json::array{1, 2, 3}}}}},
                     {"targets", json::array{json::object{{"type", "noop"}}}}};
      if (auto ok = router.add_route(r); !ok) throw std::runtime_error(ok.error().message);
    }
    const char* unindexed[] = {
        R"({"id":"u0","conditions":[{"type":"payload","field":"note","operator":"regex","value":"^(a+)+$"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u1","conditions":[{"type":"metadata","field":"region","operator":"equals","value":"us"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u2","conditions":[{"type":"aggregate_type","operator":"equals","value":"invoice"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u3","conditions":[{"type":"event_type","operator":"regex","value":"^invoice\\."}],"targets":[{"type":"noop"}]})",
        R"({"id":"u4","conditions":[{"type":"payload","field":"customer","operator":"equals","value":"c-1"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u5","conditions":[{"type":"event_type","operator":"not_in","value":["order.t1","order.t2"]},{"type":"payload","field":"total","operator":"equals","value":-1}],"targets":[{"type":"noop"}]})",
        R"({"id":"u6","conditions":[{"type":"payload","field":"missing.deep","operator":"contains","value":"x"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u7","conditions":[{"type":"aggregate_type","operator":"in","value":["invoice","shipment"]}],"targets":[{"type":"noop"}]})",
        R"({"id":"u8","conditions":[{"type":"metadata","field":"sourceSystem","operator":"equals","value":"crm"}],"targets":[{"type":"noop"}]})",
        R"({"id":"u9","conditions":[{"type":"event_type","operator":"contains","value":"refund"}],"targets":[{"type":"noop"}]})",
    };
    for (const char* u : unindexed)
      if (auto ok = router.add_route(json::parse(u)); !ok) throw std::runtime_error(ok.error().message);
    auto evs = make_events(events, 2000);  // half the types have a rule
    run(router, make_events(2000, 2000), 500);  // warm-up
    noop_target::count = 0;
    const double s = run(router, evs, 500);
    std::cout << "matching: " << rules << " pinned + 10 unindexed rules, " << events << " events in " << s << " s = "
              << static_cast<long long>(events / s) << " events/s; " << noop_target::count.load()
              << " no-op deliveries, " << router.matched() << " matches\n";
  }
  for (const char* op : {"equals", "contains", "regex", "suffix"}) {
    // 1,000 rules on a payload field: string equalities are indexed by value; `contains`
    // and `regex` cannot be, but one RE2::Set pass over the field picks the rules that can
    // match; `suffix` is neither: every rule is tested on every event (the worst case).
    const std::string o = op;
    if (!wanted(op)) continue;
    auto make = [](const std::string& type, const json::object&, const std::string& field)
        -> result<std::shared_ptr<route_target>> {
      if (type != "noop") return error::invalid(field + ".type", "noop only");
      return std::shared_ptr<route_target>(std::make_shared<noop_target>());
    };
    event_router router(store, default_clock(), retries, make, {.max_concurrent_deliveries = concurrency});
    for (int i = 0; i < rules; ++i) {
      const std::string value = o == "regex" ? "^c-" + std::to_string(i) + "!$" : "c-" + std::to_string(i) + "!";
      json::object r{{"id", "a" + std::to_string(i)},
                     {"conditions", json::array{json::object{{"type", "payload"}, {"field", "customer"}, {"operator", op},
                                                              {"value", value}}}},
                     {"targets", json::array{json::object{{"type", "noop"}}}}};
      if (auto ok = router.add_route(r); !ok) throw std::runtime_error(ok.error().message);
    }
    const int n = o == "suffix" ? std::max(events / 10, 1000) : events;
    auto evs = make_events(n, 2000);
    run(router, make_events(500, 2000), 500);
    noop_target::count = 0;
    const double s = run(router, evs, 500);
    const char* how = o == "equals" ? " (indexed)" : o == "suffix" ? " (each tested)" : " (prefiltered)";
    std::cout << "matching: " << rules << " payload '" << op << "' rules" << how << ", " << n << " events in " << s
              << " s = " << static_cast<long long>(n / s) << " events/s; " << noop_target::count.load()
              << " no-op deliveries\n";
  }
  if (wanted("webhooks")) {
    bench::loopback_endpoint endpoint;
    route_target_options o;
    o.allow_private = {"127.0.0.1"};
    event_router router(store, default_clock(), retries, make_route_target_factory(o),
                        {.max_concurrent_deliveries = concurrency});
    json::object r{{"id", "hook"},
                   {"targets", json::array{json::object{
                                   {"type", "webhook"},
                                   {"config", {{"url", endpoint.url()}, {"secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}}}}}};
    if (auto ok = router.add_route(r); !ok) throw std::runtime_error(ok.error().message);
    auto evs = make_events(webhook_events, 10);
    run(router, make_events(500, 10), 500);
    const auto before = router.delivered();
    const double s = run(router, evs, 500);
    const auto n = router.delivered() - before;
    std::cout << "webhooks: " << n << " signed deliveries in " << s << " s = " << static_cast<long long>(static_cast<double>(n) / s)
              << " deliveries/s (" << concurrency << " threads, batches of 500, failed " << router.failed() << ")\n";
  }
  return 0;
}
