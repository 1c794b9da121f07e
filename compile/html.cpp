// Function::to_html: one self-contained HTML page showing a compiled function's steps.
//
// The page is built from the Plan: one box per step (its op, the node's source line, output
// types, the last call's shapes and buffer bytes, whether it writes an input's buffer, and
// with profiling its time), one shape per leaf (inputs, shared variables, constants), and
// the function's outputs and updates. Graphviz's `dot` program lays the graph out as SVG at
// the time of the call; the page embeds that SVG, the nodes' details as JSON, and a short
// script for panning, zooming and showing a clicked node's details.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>

#include "compile/function.hpp"
#include "compile/plan.hpp"
#include "graph/error.hpp"
#include "graph/printing.hpp"

extern char** environ;

namespace theanine {

namespace {

// A string as a JSON string literal; "</" is written "<\/" so that the text cannot end the
// page's <script> element.
std::string json_string(const std::string& s) {
    std::string r = "\"";
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        switch (c) {
        case '"': r += "\\\""; break;
        case '\\': r += "\\\\"; break;
        case '\n': r += "\\n"; break;
        case '\t': r += "\\t"; break;
        case '\r': r += "\\r"; break;
        case '/': r += i > 0 && s[i - 1] == '<' ? "\\/" : "/"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                r += fmt::format("\\u{:04x}", static_cast<int>(c));
            } else {
                r += c;
            }
        }
    }
    return r + "\"";
}

// A label or tooltip in a dot string; a newline becomes dot's line break.
std::string dot_escape(const std::string& s) {
    std::string r;
    for (char c : s) {
        if (c == '\n') {
            r += "\\n";
            continue;
        }
        if (c == '"' || c == '\\') r += '\\';
        r += c;
    }
    return r;
}

std::string bytes_text(std::size_t b) {
    if (b < 10 * 1024) return fmt::format("{} B", b);
    if (b < 10 * 1024 * 1024) return fmt::format("{:.1f} KiB", static_cast<double>(b) / 1024);
    return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1024 * 1024));
}

// A temporary folder, removed with everything in it.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "theanine_dot_XXXXXX").string();
        if (!::mkdtemp(pattern.data())) {
            throw UsageError(fmt::format("Function::to_html: cannot create a temporary folder ({})", std::strerror(errno)));
        }
        path = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

std::string read_all(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

// Runs Graphviz's dot on the text and returns the SVG it writes. The program is THEANINE_DOT
// when that is set, else "dot" on PATH.
std::string layout_svg(const std::string& dot_text) {
    TempDir dir;
    const auto in = dir.path / "graph.dot", out = dir.path / "graph.svg", err = dir.path / "dot.err";
    {
        std::ofstream f(in, std::ios::binary);
        f << dot_text;
        if (!f.flush()) throw UsageError(fmt::format("Function::to_html: cannot write {}", in.string()));
    }
    const char* env = std::getenv("THEANINE_DOT");
    const std::string program = env && *env ? env : "dot";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::string a0 = program, a1 = "-Tsvg", a2 = in.string();
    char* argv[] = {a0.data(), a1.data(), a2.data(), nullptr};
    pid_t pid = 0;
    const int rc = ::posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        throw UsageError(fmt::format("Function::to_html: cannot run Graphviz's '{}' ({}), which lays the graph out; "
                                     "install Graphviz (Debian package graphviz) or set THEANINE_DOT to its dot program",
                                     program, std::strerror(rc)));
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) throw UsageError(fmt::format("Function::to_html: waiting for '{}' failed", program));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::string msg = read_all(err);
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        throw UsageError(fmt::format("Function::to_html: '{}' failed ({}): {}", program,
                                     WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                                       : fmt::format("signal {}", WTERMSIG(status)),
                                     msg.empty() ? "no message" : msg));
    }
    std::string svg = read_all(out);
    const std::size_t at = svg.find("<svg");
    if (at == std::string::npos) throw UsageError(fmt::format("Function::to_html: '{}' wrote no SVG", program));
    return svg.substr(at);
}

const char* kStyle = R"(
body { margin: 0; font: 14px system-ui, sans-serif; color: #202124; display: grid;
       grid-template-columns: 1fr 340px; grid-template-rows: auto 1fr; height: 100vh; }
header { grid-column: 1 / 3; padding: 8px 14px; border-bottom: 1px solid #dadce0; background: #f8f9fa; }
header h1 { font-size: 16px; margin: 0 0 4px 0; }
header .summary { color: #5f6368; }
header button { margin-left: 6px; }
#view { overflow: hidden; position: relative; cursor: grab; background: #fff; }
#view svg { width: 100%; height: 100%; user-select: none; }
#view g.node { cursor: pointer; }
#view g.node.selected polygon, #view g.node.selected ellipse, #view g.node.selected path { stroke: #d93025; stroke-width: 3px; }
aside { border-left: 1px solid #dadce0; padding: 10px 14px; overflow: auto; background: #fbfbfb; }
aside h2 { font-size: 15px; margin: 4px 0 8px 0; word-break: break-all; }
aside table { border-collapse: collapse; width: 100%; }
aside td { border-top: 1px solid #eee; padding: 4px 2px; vertical-align: top; word-break: break-word; }
aside td:first-child { color: #5f6368; width: 92px; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 6px; border: 1px solid #999; border-radius: 3px; }
)";

// Pan with the mouse, zoom with the wheel or the buttons (keys + - 0), click a node for its
// details. The page reports what it shows in #status (read by the browser test).
const char* kScript = R"(
(function () {
  const status = document.getElementById('status');
  let errors = 0;
  window.addEventListener('error', function () { errors += 1; status.dataset.errors = String(errors); });
  const svg = document.querySelector('#view svg');
  svg.removeAttribute('width');
  svg.removeAttribute('height');
  const start = svg.viewBox.baseVal;
  const home = [start.x, start.y, start.width, start.height];
  function setBox(b) { svg.setAttribute('viewBox', b.join(' ')); }
  function box() { const v = svg.viewBox.baseVal; return [v.x, v.y, v.width, v.height]; }
  function toGraph(clientX, clientY) {
    const p = svg.createSVGPoint();
    p.x = clientX; p.y = clientY;
    return p.matrixTransform(svg.getScreenCTM().inverse());
  }
  function zoom(k, clientX, clientY) {
    const b = box();
    const r = svg.getBoundingClientRect();
    const c = toGraph(clientX === undefined ? r.left + r.width / 2 : clientX,
                      clientY === undefined ? r.top + r.height / 2 : clientY);
    setBox([c.x - (c.x - b[0]) * k, c.y - (c.y - b[1]) * k, b[2] * k, b[3] * k]);
  }
  svg.addEventListener('wheel', function (e) {
    e.preventDefault();
    zoom(Math.exp(e.deltaY * 0.0015), e.clientX, e.clientY);
  }, { passive: false });
  let drag = null, moved = false;
  svg.addEventListener('pointerdown', function (e) {
    drag = { x: e.clientX, y: e.clientY, b: box(), m: svg.getScreenCTM() };
    moved = false;
  });
  window.addEventListener('pointermove', function (e) {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    setBox([drag.b[0] - dx / drag.m.a, drag.b[1] - dy / drag.m.d, drag.b[2], drag.b[3]]);
  });
  window.addEventListener('pointerup', function () { drag = null; });
  document.getElementById('zoom-in').onclick = function () { zoom(1 / 1.25); };
  document.getElementById('zoom-out').onclick = function () { zoom(1.25); };
  document.getElementById('fit').onclick = function () { setBox(home); };
  window.addEventListener('keydown', function (e) {
    if (e.key === '+' || e.key === '=') zoom(1 / 1.25);
    if (e.key === '-') zoom(1.25);
    if (e.key === '0') setBox(home);
  });
  const details = document.getElementById('details');
  function cell(text) { const td = document.createElement('td'); td.textContent = text; return td; }
  function show(id) {
    const n = NODES[id];
    if (!n) return;
    document.querySelectorAll('#view g.node.selected').forEach(function (g) { g.classList.remove('selected'); });
    document.getElementById(id).classList.add('selected');
    details.replaceChildren();
    const h = document.createElement('h2');
    h.textContent = n.title;
    details.appendChild(h);
    const table = document.createElement('table');
    n.rows.forEach(function (r) {
      const tr = document.createElement('tr');
      tr.appendChild(cell(r[0]));
      tr.appendChild(cell(r[1]));
      table.appendChild(tr);
    });
    details.appendChild(table);
    status.dataset.selected = id;
  }
  document.querySelectorAll('#view g.node').forEach(function (g) {
    g.addEventListener('click', function () { if (!moved) show(g.id); });
  });
  // page.html#s3 opens with step 3's details shown.
  if (location.hash.length > 1) show(decodeURIComponent(location.hash.slice(1)));
  const steps = document.querySelectorAll('#view g.node.step').length;
  status.dataset.steps = String(steps);
  status.dataset.errors = String(errors);
  status.textContent = steps + ' steps shown';
  console.log('theanine graph view: ' + steps + ' steps');
})();
)";

struct PageNode {
    std::string id, cls, label, title, shape, fill, border;
    std::vector<std::pair<std::string, std::string>> rows;
};

}  // namespace

std::string Function::to_html() const {
    const Plan& p = plan();
    std::vector<PageNode> nodes;
    std::vector<std::string> edges;
    std::unordered_map<const Node*, std::size_t> step_of;
    for (std::size_t i = 0; i < p.steps.size(); ++i) step_of[p.steps[i].node] = i;
    std::unordered_map<const Node*, std::string> leaf_id;
    std::size_t n_inputs = 0, n_shared = 0, n_constants = 0;

    // The page id of a variable's producer: its step, or its leaf (made on first use).
    auto id_of = [&](const Variable& v) -> std::string {
        const Node* n = v.node_ptr().get();
        auto s = step_of.find(n);
        if (s != step_of.end()) return fmt::format("s{}", s->second);
        auto l = leaf_id.find(n);
        if (l != leaf_id.end()) return l->second;
        PageNode leaf;
        leaf.id = fmt::format("l{}", leaf_id.size());
        leaf.title = leaf_or_op(v);
        std::string kind;
        if (v.is_input()) {
            kind = "input";
            leaf.shape = "ellipse";
            leaf.fill = "#e6f4ea";
            leaf.border = "#188038";
            ++n_inputs;
        } else if (v.is_shared()) {
            kind = "shared variable";
            leaf.shape = "ellipse";
            leaf.fill = "#f3e8fd";
            leaf.border = "#8430ce";
            ++n_shared;
        } else if (v.is_constant()) {
            kind = "constant";
            leaf.shape = "ellipse";
            leaf.fill = "#f1f3f4";
            leaf.border = "#9aa0a6";
            ++n_constants;
        } else {
            kind = "value";  // an apply node that is no step (not expected)
            leaf.shape = "ellipse";
            leaf.fill = "#ffffff";
            leaf.border = "#5f6368";
        }
        leaf.cls = kind == "shared variable" ? "shared" : kind;
        leaf.label = leaf.title + "\n" + v.type().str();
        leaf.rows = {{"kind", kind}, {"type", v.type().str()}};
        if (v.is_constant()) {
            const Tensor& t = v.node().value;
            leaf.rows.push_back({"shape", shape_string(t.shape())});
        }
        leaf_id[n] = leaf.id;
        nodes.push_back(std::move(leaf));
        return nodes.back().id;
    };

    double total_seconds = 0;
    for (double t : p.step_seconds) total_seconds += t;
    const double calls = static_cast<double>(std::max<std::int64_t>(p.calls, 1));
    for (std::size_t i = 0; i < p.steps.size(); ++i) {
        const Step& st = p.steps[i];
        const Node& node = *st.node;
        PageNode n;
        n.id = fmt::format("s{}", i);
        n.cls = "step";
        n.shape = "box";
        n.title = fmt::format("step {}: {}", i, st.op->name());
        n.rows.push_back({"op", st.op->name()});
        n.rows.push_back({"step", fmt::format("{} of {}", i, p.steps.size())});
        const std::string where = where_string(node.where);
        if (!where.empty()) n.rows.push_back({"built at", where});
        std::string label = st.op->name();
        if (label.size() > 48) label = label.substr(0, 45) + "...";
        // In place: an output that is an input's slot (the planner's grant), or a Join whose
        // inputs were computed into its output.
        std::vector<std::string> in_place;
        for (std::size_t o = 0; o < st.out.size(); ++o) {
            for (std::size_t k = 0; k < st.in.size(); ++k) {
                if (st.out[o] == st.in[k]) {
                    in_place.push_back(fmt::format("output {} overwrites input {} ({})", o, k,
                                                   leaf_or_op(node.inputs[k])));
                }
            }
        }
        if (!st.place.empty()) in_place.push_back("its inputs are computed into its output");
        for (std::size_t o = 0; o < node.types.size(); ++o) {
            const std::string type = node.types[o].str();
            const bool ran = o < st.shapes.size() && (!st.shapes[o].empty() || node.types[o].ndim() == 0);
            const std::string shape = ran ? shape_string(st.shapes[o]) : "";
            std::string what = type + (ran ? " " + shape : ", not run yet");
            if (ran && o < st.bytes.size()) {
                what += st.bytes[o] > 0 ? fmt::format(", buffer {}", bytes_text(st.bytes[o])) : ", shares an input's buffer";
            }
            n.rows.push_back({fmt::format("output {}", o), what});
            label += "\n" + type + (ran ? " " + shape : "");
        }
        n.rows.push_back({"in place", in_place.empty() ? "no" : fmt::format("{}", fmt::join(in_place, "; "))});
        if (!in_place.empty()) label += "\n(in place)";
        if (p.profile && i < p.step_seconds.size()) {
            const double us = p.step_seconds[i] / calls * 1e6;
            const double share = total_seconds > 0 ? 100 * p.step_seconds[i] / total_seconds : 0;
            n.rows.push_back({"time", fmt::format("{:.2f} us per call, {:.1f} % of the steps ({} calls)", us, share, p.calls)});
            label += fmt::format("\n{:.1f} us ({:.1f} %)", us, share);
        }
        n.label = label;
        n.fill = in_place.empty() ? "#e8f0fe" : "#fef3e0";
        n.border = in_place.empty() ? "#1a73e8" : "#e37400";
        std::vector<std::string> ins;
        for (std::size_t k = 0; k < node.inputs.size(); ++k) {
            const std::string from = id_of(node.inputs[k]);
            ins.push_back(leaf_or_op(node.inputs[k]));
            edges.push_back(node.inputs.size() > 1 ? fmt::format("{} -> {} [label=\"{}\"]", from, n.id, k)
                                                   : fmt::format("{} -> {}", from, n.id));
        }
        n.rows.insert(n.rows.begin() + 1, {"inputs", fmt::format("{}", fmt::join(ins, ", "))});
        nodes.push_back(std::move(n));
    }
    // Outputs and updates.
    for (std::size_t o = 0; o < p.outputs.size(); ++o) {
        PageNode n;
        n.id = fmt::format("o{}", o);
        n.cls = "output";
        n.shape = "house";
        n.fill = "#fce8e6";
        n.border = "#c5221f";
        n.title = fmt::format("output {}", o);
        n.label = n.title + "\n" + p.outputs[o].type().str();
        n.rows = {{"kind", "output"}, {"type", p.outputs[o].type().str()},
                  {"borrow", o < p.results.size() && p.results[o].borrow ? "yes" : "no"}};
        edges.push_back(fmt::format("{} -> {}", id_of(p.outputs[o]), n.id));
        nodes.push_back(std::move(n));
    }
    for (std::size_t u = 0; u < p.update_values.size(); ++u) {
        const auto& [name, value] = p.update_values[u];
        PageNode n;
        n.id = fmt::format("u{}", u);
        n.cls = "update";
        n.shape = "cds";
        n.fill = "#f3e8fd";
        n.border = "#8430ce";
        n.title = "update " + name;
        n.label = n.title;
        n.rows = {{"kind", "update of a shared variable"}, {"variable", name}, {"type", value.type().str()}};
        edges.push_back(fmt::format("{} -> {} [style=dashed]", id_of(value), n.id));
        nodes.push_back(std::move(n));
    }

    std::string dot = "digraph function {\n  rankdir=TB;\n  bgcolor=\"transparent\";\n"
                      "  node [fontname=\"Helvetica\", fontsize=11, style=\"filled\"];\n"
                      "  edge [fontname=\"Helvetica\", fontsize=9, color=\"#5f6368\"];\n";
    for (const auto& n : nodes) {
        dot += fmt::format("  {0} [id=\"{0}\", class=\"{1}\", shape={2}, fillcolor=\"{3}\", color=\"{4}\", label=\"{5}\", "
                           "tooltip=\"{6}\"];\n",
                           n.id, n.cls, n.shape, n.fill, n.border, dot_escape(n.label), dot_escape(n.title));
    }
    for (const auto& e : edges) dot += "  " + e + ";\n";
    dot += "}\n";
    const std::string svg = layout_svg(dot);

    std::string json = "{";
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        const auto& n = nodes[i];
        json += fmt::format("{}{}: {{\"title\": {}, \"rows\": [", i ? ",\n" : "\n", json_string(n.id), json_string(n.title));
        for (std::size_t r = 0; r < n.rows.size(); ++r) {
            json += fmt::format("{}[{}, {}]", r ? ", " : "", json_string(n.rows[r].first), json_string(n.rows[r].second));
        }
        json += "]}";
    }
    json += "\n}";

    auto count = [](std::size_t n, const char* what) { return fmt::format("{} {}{}", n, what, n == 1 ? "" : "s"); };
    std::string summary = fmt::format("{} &middot; {} &middot; {} &middot; {} &middot; {} &middot; {} &middot; {} of buffers",
                                      count(p.steps.size(), "step"), count(n_inputs, "input"),
                                      count(n_shared, "shared variable"), count(n_constants, "constant"),
                                      count(p.outputs.size(), "output"), count(p.update_values.size(), "update"),
                                      bytes_text(buffer_bytes()));
    if (p.profile) {
        summary += fmt::format(" &middot; profile: {} calls, {:.1f} us per call in the steps", p.calls,
                               total_seconds / calls * 1e6);
    }
    std::string page = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    page += fmt::format("<title>theanine function: {} steps</title>\n<style>{}</style>\n</head>\n<body>\n", p.steps.size(), kStyle);
    page += "<header><h1>Compiled function</h1><div class=\"summary\">" + summary +
            "</div><div class=\"legend\"><span style=\"background:#e8f0fe\">step</span>"
            "<span style=\"background:#fef3e0\">step in place</span><span style=\"background:#e6f4ea\">input</span>"
            "<span style=\"background:#f3e8fd\">shared variable / update</span>"
            "<span style=\"background:#f1f3f4\">constant</span><span style=\"background:#fce8e6\">output</span>"
            "<button id=\"zoom-in\">+</button><button id=\"zoom-out\">&minus;</button><button id=\"fit\">fit</button>"
            " drag to pan, wheel to zoom, click a node</div></header>\n";
    page += "<div id=\"view\">" + svg + "</div>\n";
    page += "<aside><div id=\"details\">Click a node to see its details.</div>";
    page += fmt::format("<p id=\"status\" data-expected-steps=\"{}\" data-steps=\"\" data-errors=\"\"></p></aside>\n",
                        p.steps.size());
    page += "<script>\nconst NODES = " + json + ";\n" + kScript + "</script>\n</body>\n</html>\n";
    return page;
}

}  // namespace theanine
