#include "server/server_http.h"

#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "edgeshard/error.h"
#include "server/server_cluster.h"
#include "server/server_cluster_page.h"
#include "server/server_fields.h"
#include "server/server_llama.h"
#include "server/server_openai.h"
#include "tokenizer/tokenizer_chat.h"

namespace es::server {
namespace {

using json = nlohmann::json;
constexpr auto kPoll =
    std::chrono::milliseconds(100);  // how often a waiting stream checks its socket
constexpr size_t kMaxDiscard = 64u
                               << 20;  // oversized chunked bodies are drained up to this, then cut

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(Dump(ErrorJson(e)), "application/json");
}

// Comparison time does not depend on where the strings differ.
bool SameKey(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string EndpointLabel(const std::string& path) {
  for (const char* p : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                        "/metrics", "/tokenize", "/detokenize", "/apply-template", "/props"})
    if (path == p) return p;
  if (path == "/cluster" || path == "/cluster.json") return path;
  if (path == "/chat/completions") return "/v1/chat/completions";
  if (path == "/completions") return "/v1/completions";
  if (path == "/models") return "/v1/models";
  return "other";
}

// One generation's state shared by the content provider calls of its response.
struct GenStream {
  std::shared_ptr<Job> job;
  ResponseWriter writer;
  bool stream;
};

}  // namespace

struct HttpServer::Impl {
  ServerOptions opts;
  std::unique_ptr<model::LlamaModel> own_model;  // alone; with a cluster the coordinator's
  std::unique_ptr<tok::Tokenizer> own_tok;
  const model::LlamaModel* model = nullptr;
  const tok::Tokenizer* tok = nullptr;
  std::string chat_template;  // resolved: override, the model's, or "" (chat disabled)
  std::string template_note;
  Metrics metrics;
  std::unique_ptr<Backend> sched;
  ClusterBackend* cluster = nullptr;  // sched, when serving a cluster
  Scheduler* local = nullptr;         // sched, when serving alone
  std::unique_ptr<GuardedServer> http;
  int port = 0;

  void Routes();
  nlohmann::json Props() const;
  void Generate(Endpoint ep, const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader);
};

HttpServer::HttpServer(const ServerOptions& o) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.opts = o;
  if (o.cluster) {
    ClusterServeOptions co{.n_slots = o.sched.n_slots,
                           .max_queue = o.sched.max_queue,
                           .in_flight = o.cluster_in_flight,
                           .micro_batch = o.cluster_micro_batch,
                           .load_hold_ms = o.cluster_load_hold_ms};
    auto backend = std::make_unique<ClusterBackend>(o.model_path, *o.cluster, co, s.metrics);
    s.cluster = backend.get();
    s.model = &backend->model();
    s.tok = &backend->tokenizer();
    s.sched = std::move(backend);
  } else {
    model::LoadOptions lo;
    lo.use_mmap = o.use_mmap;
    lo.mlock = o.mlock;
    lo.gpu_layers = o.gpu_layers;
    lo.gpu_device = o.gpu_device;
    s.own_model = model::LlamaModel::Load(o.model_path, lo);
    s.own_tok = tok::Tokenizer::FromGGUF(s.own_model->file());
    s.model = s.own_model.get();
    s.tok = s.own_tok.get();
  }
  if (s.tok->n_vocab() != s.model->config().n_vocab)
    throw Error(o.model_path + ": the vocabulary has " + std::to_string(s.tok->n_vocab()) +
                " tokens but token_embd.weight has " + std::to_string(s.model->config().n_vocab) +
                " rows");
  if (s.opts.model_id.empty())
    s.opts.model_id = std::filesystem::path(o.model_path).stem().string();

  // Chat template: a bad --chat-template is an error now; a model template that fails to render
  // a plain user turn only disables the chat endpoint (completions still work). A model without
  // one chats in chatml.
  const std::string tmpl =
      tok::ChatTemplateOrDefault(o.chat_template, s.tok->ChatTemplate(), o.model_path);
  try {
    tok::ApplyChatTemplate(tmpl, {{"user", "hi"}}, true, "", "");
    s.chat_template = tmpl;
    s.template_note = "chat template " + tok::ChatTemplateName(tmpl);
  } catch (const Error& e) {
    if (!o.chat_template.empty()) throw;
    s.template_note = std::string("chat disabled (") + e.what() + ")";
  }

  if (!s.sched) {
    auto sched = std::make_unique<Scheduler>(*s.model, *s.tok, o.sched, s.metrics);
    s.local = sched.get();
    s.sched = std::move(sched);
  }
  ConnLimits conn = o.conn;
  if (conn.max_connections <= 0)
    conn.max_connections = std::max(256, s.sched->n_slots() + std::max(o.sched.max_queue, 0) + 8);
  s.http = std::make_unique<GuardedServer>(conn);
  s.http->set_payload_max_length(o.max_body);
  s.Routes();
}

HttpServer::~HttpServer() {
  Stop();
}

int HttpServer::Bind() {
  Impl& s = *impl_;
  if (s.opts.port == 0) {
    s.port = s.http->bind_to_any_port(s.opts.host);
    if (s.port < 0) s.port = 0;
  } else if (s.http->bind_to_port(s.opts.host, s.opts.port)) {
    s.port = s.opts.port;
  }
  if (s.port > 0) s.http->RaiseBacklog();
  if (s.port <= 0)
    throw Error("cannot listen on " + s.opts.host + ":" + std::to_string(s.opts.port) +
                " (address in use, or not an address of this machine)");
  return s.port;
}

void HttpServer::Run() {
  impl_->http->listen_after_bind();
}

void HttpServer::Stop() {
  impl_->http->stop();
  impl_->sched->Stop();
}

std::string HttpServer::Describe() const {
  const Impl& s = *impl_;
  const auto& c = s.model->config();
  return s.opts.model_id + " (" + c.arch + ", " + std::to_string(c.n_layer) + " layers), " +
         s.sched->Describe() + ", " + s.template_note;
}

const model::LlamaModel* HttpServer::local_model() const {
  return impl_->local ? impl_->model : nullptr;
}
size_t HttpServer::local_kv_bytes() const {
  return impl_->local ? impl_->local->kv_bytes() : 0;
}
size_t HttpServer::local_buffer_bytes() const {
  return impl_->local ? impl_->local->buffer_bytes() : 0;
}

int HttpServer::n_ctx() const {
  return impl_->sched->n_ctx();
}
int HttpServer::n_ctx_train() const {
  return impl_->model->config().n_ctx_train;
}

void HttpServer::Impl::Routes() {
  using httplib::Request;
  using httplib::Response;
  using HR = httplib::Server::HandlerResponse;

  http->set_pre_routing_handler([this](const Request& req, Response& res) {
    if (opts.api_key.empty() || req.path == "/health") return HR::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.compare(0, prefix.size(), prefix) == 0 &&
        SameKey(auth.substr(prefix.size()), opts.api_key))
      return HR::Unhandled;
    // A browser cannot send the header when it opens the cluster page: the page takes the key
    // as ?api_key=KEY and passes it on to /cluster.json.
    if ((req.path == "/cluster" || req.path == "/cluster.json") && req.has_param("api_key") &&
        SameKey(req.get_param_value("api_key"), opts.api_key))
      return HR::Unhandled;
    SendError(
        res, ApiError(401,
                      auth.empty() ? "no API key given: send the header 'Authorization: Bearer KEY'"
                                   : "the API key is not valid",
                      "", "invalid_api_key"));
    return HR::Handled;
  });
  // Errors httplib answers itself (unknown path, unreadable request) get the OpenAI shape too.
  http->set_error_handler(httplib::Server::HandlerWithResponse([](const Request& req,
                                                                  Response& res) {
    if (!res.body.empty() || res.content_provider_) return HR::Unhandled;
    std::string msg = "the request could not be handled (HTTP " + std::to_string(res.status) + ")";
    if (res.status == 400) msg = "the request is malformed (request line, headers or body)";
    if (res.status == 404) msg = "no such endpoint: " + req.method + " " + req.path;
    if (res.status == 413) msg = "the request body is larger than the server accepts";
    SendError(res, ApiError(res.status, msg, "", res.status == 413 ? "request_too_large" : ""));
    return HR::Handled;
  }));
  http->set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = std::string("internal error: ") + e.what();
    } catch (...) {
    }
    SendError(res, ApiError(500, msg));
  });
  http->set_logger([this](const Request& req, const Response& res) {
    metrics.HttpRequest(EndpointLabel(req.path), res.status);
    if (opts.log_requests)
      std::fprintf(stderr, "edgeshard serve: %s %s %d\n", req.method.c_str(), req.path.c_str(),
                   res.status);
  });

  http->Get("/health", [](const Request&, Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  auto models = [this](const Request&, Response& res) {
    json m = {
        {"id", opts.model_id},
        {"object", "model"},
        {"created", 0},
        {"owned_by", "edgeshard"},
        {"meta",
         {{"n_ctx", sched->n_ctx()}, {"n_slots", sched->n_slots()}, {"n_vocab", tok->n_vocab()}}}};
    res.set_content(Dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
  };
  http->Get("/v1/models", models);
  http->Get("/models", models);
  http->Get("/metrics", [this](const Request&, Response& res) {
    res.set_content(metrics.Render(), "text/plain; version=0.0.4");
  });
  // llama-server's endpoints: a JSON body in, a JSON body out. The pre-routing handler above
  // asks them for the API key like every other endpoint.
  auto json_post = [this](const char* path, std::function<json(const json&)> fn) {
    http->Post(path, [fn](const Request& req, Response& res) {
      try {
        res.set_content(Dump(fn(ParseBody(req.body))), "application/json");
      } catch (const ApiError& e) {
        SendError(res, e);
      } catch (const std::exception& e) {
        SendError(res, ApiError(400, std::string("the request could not be used: ") + e.what()));
      }
    });
  };
  json_post("/tokenize", [this](const json& b) { return Tokenize(b, *tok); });
  json_post("/detokenize", [this](const json& b) { return Detokenize(b, *tok); });
  json_post("/apply-template", [this](const json& b) {
    return ApplyTemplate(b, *tok, chat_template, sched->n_ctx());
  });
  // The cluster page: devices, links, the plan, live costs and events (serve --cluster only).
  auto cluster_only = [this](Response& res) {
    if (cluster) return true;
    SendError(res, ApiError(404,
                            "this server runs the model on one device: the cluster page needs "
                            "`edgeshard serve --cluster`",
                            "", "not_found"));
    return false;
  };
  http->Get("/cluster", [cluster_only](const Request&, Response& res) {
    if (cluster_only(res)) res.set_content(ClusterPageHtml(), "text/html; charset=utf-8");
  });
  http->Get("/cluster.json", [this, cluster_only](const Request&, Response& res) {
    if (cluster_only(res)) res.set_content(Dump(cluster->Status()), "application/json");
  });
  http->Get("/props", [this](const Request&, Response& res) {
    res.set_content(Dump(Props()), "application/json");
  });
  for (const char* path : {"/v1/chat/completions", "/chat/completions"})
    http->Post(path,
               [this](const Request& req, Response& res, const httplib::ContentReader& reader) {
                 Generate(Endpoint::kChat, req, res, reader);
               });
  for (const char* path : {"/v1/completions", "/completions"})
    http->Post(path,
               [this](const Request& req, Response& res, const httplib::ContentReader& reader) {
                 Generate(Endpoint::kCompletion, req, res, reader);
               });
}

// What llama-server's /props reports that this server has: the settings a plain request gets,
// the slots, the model and the chat template text in use.
json HttpServer::Impl::Props() const {
  const ParsedRequest d = ParseRequest(Endpoint::kCompletion, json{{"prompt", ""}}, sched->n_ctx());
  const auto& s = d.gen.sampling;
  const json params = {{"temperature", s.temperature},
                       {"top_k", s.top_k},
                       {"top_p", s.top_p},
                       {"min_p", s.min_p},
                       {"repeat_penalty", s.repeat_penalty},
                       {"repeat_last_n", s.penalty_last_n},
                       {"presence_penalty", s.presence_penalty},
                       {"frequency_penalty", s.frequency_penalty},
                       {"n_predict", -1},
                       {"seed", -1},
                       {"n_keep", opts.sched.n_keep},
                       {"n_probs", 0},
                       {"ignore_eos", false},
                       {"stream", false}};
  auto text = [this](int32_t id) { return id >= 0 ? tok->TokenText(id) : std::string(); };
  return json{
      {"default_generation_settings",
       {{"n_ctx", sched->n_ctx()}, {"params", params}, {"model", opts.model_path}}},
      {"total_slots", sched->n_slots()},
      {"model_path", opts.model_path},
      {"model_alias", opts.model_id},
      {"n_ctx_train", model->config().n_ctx_train},
      {"n_vocab", tok->n_vocab()},
      {"chat_template", chat_template.empty() ? "" : tok::ChatTemplateText(chat_template)},
      {"chat_template_name", chat_template.empty() ? "" : tok::ChatTemplateName(chat_template)},
      {"bos_token", text(tok->bos())},
      {"eos_token", text(tok->eos())},
      {"context_shift", sched->context_shift()},
      {"build_info", "edgeshard 0.1.0"}};
}

void HttpServer::Impl::Generate(Endpoint ep, const httplib::Request& req, httplib::Response& res,
                                const httplib::ContentReader& reader) {
  std::shared_ptr<GenStream> st;
  try {
    if (req.is_multipart_form_data())
      throw ApiError(415, "multipart bodies are not accepted: send the request as JSON");
    // The body, bounded: httplib refuses a too large Content-Length itself (413); chunked
    // bodies are counted here and drained (up to a bound) so the connection stays in step.
    std::string body;
    size_t seen = 0;
    const bool ok = reader([&](const char* d, size_t n) {
      seen += n;
      if (seen > opts.max_body) {
        body.clear();
        return seen <= kMaxDiscard;
      }
      body.append(d, n);
      return true;
    });
    if (res.status == 413 || seen > opts.max_body)
      throw ApiError(413,
                     "the request body is larger than the limit of " +
                         std::to_string(opts.max_body) + " bytes",
                     "", "request_too_large");
    if (!ok) throw ApiError(400, "the request body could not be read");
    // With context shift a generation may outrun the context, as in llama.cpp's server.
    ParsedRequest p =
        ParseRequest(ep, ParseBody(body), sched->n_ctx(), sched->context_shift() ? 1 << 24 : 0);
    p.gen.prompt = BuildPrompt(p, *tok, chat_template, sched->n_ctx());
    PlanReply(p, *tok, chat_template);
    p.gen.sampling.logit_bias = ResolveLogitBias(p, *tok);
    auto job = std::make_shared<Job>(p.gen);
    if (!sched->Submit(job)) {
      res.set_header("Retry-After", "1");
      throw ApiError(503,
                     "the server is busy: every slot is in use and the queue is full; retry later",
                     "", "server_overloaded");
    }
    st = std::make_shared<GenStream>(
        GenStream{job, ResponseWriter(p, *tok, opts.model_id), p.stream});
  } catch (const ApiError& e) {
    SendError(res, e);
    return;
  } catch (const std::exception& e) {
    // A field shaped in a way the checks did not foresee, or input the tokenizer refused.
    SendError(res, ApiError(400, std::string("the request could not be used: ") + e.what()));
    return;
  }

  if (!st->stream) {
    // The whole answer is waited for here, so that an error (a cluster that lost what it needed)
    // gets its HTTP status rather than a 200 whose body is an error. A client that leaves
    // cancels the generation.
    while (true) {
      GenEvent ev;
      if (!st->job->Wait(ev, kPoll)) {
        if (ClientGone()) {
          st->job->Cancel();
          return;
        }
        continue;
      }
      st->writer.Accumulate(ev);
      if (!ev.done) continue;
      if (ev.finish_reason == "error")
        return SendError(
            res,
            ApiError(ev.error.find("shutting down") != std::string::npos ? 503 : 500, ev.error));
      res.status = 200;
      res.set_content(st->writer.FinalBody(), "application/json");
      return;
    }
  }
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  // Called again and again until done(): waits briefly for output and checks between waits
  // that the client is still there; returning false (or a failed write) cancels the job.
  auto provider = [st](size_t, httplib::DataSink& sink) {
    if (!sink.is_writable()) {
      st->job->Cancel();
      return false;
    }
    GenEvent ev;
    if (!st->job->Wait(ev, kPoll)) return true;
    const std::string out = st->writer.StreamEvent(ev);
    if (!out.empty() && !sink.write(out.data(), out.size())) {
      st->job->Cancel();
      return false;
    }
    if (ev.done) sink.done();
    return true;
  };
  res.set_chunked_content_provider("text/event-stream", provider, [st](bool success) {
    if (!success) st->job->Cancel();
  });
}

}  // namespace es::server
