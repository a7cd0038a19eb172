using System.Net;
using System.Text;
using System.Text.Json;
using Weft.Node;
using Weft.Telemetry;

namespace Weft.Admin;

/// <summary>
/// The node's admin API on loopback: <c>/flows</c> (live and recently finished connections),
/// <c>/config_dump</c> (enrolled pods and the inventory), <c>/ready</c>.
/// </summary>
internal sealed class AdminServer : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly NodeAgent _agent;
    private Task? _loop;

    public AdminServer(string address, NodeAgent agent)
    {
        _agent = agent;
        _listener.Prefixes.Add($"http://{address}/");
    }

    public void Start()
    {
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    private async Task LoopAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync().ConfigureAwait(false);
            }
            catch (Exception) when (!_listener.IsListening)
            {
                break;
            }
            catch (HttpListenerException)
            {
                continue;
            }

            try
            {
                Serve(context);
            }
            catch (Exception e)
            {
                Log.Warn("admin", $"{context.Request.Url?.AbsolutePath}: {e.Message}");
            }
            finally
            {
                context.Response.Close();
            }
        }
    }

    private void Serve(HttpListenerContext context)
    {
        var path = context.Request.Url?.AbsolutePath ?? "/";
        var response = context.Response;
        response.ContentType = "application/json";
        using var body = new MemoryStream();
        using (var w = new Utf8JsonWriter(body, new JsonWriterOptions { Indented = true }))
        {
            switch (path)
            {
                case "/flows":
                    w.WriteStartObject();
                    WriteFlows(w, "live", _agent.Flows.Live());
                    WriteFlows(w, "recent", _agent.Flows.Recent());
                    w.WriteEndObject();
                    break;
                case "/config_dump":
                    WriteConfig(w);
                    break;
                case "/ready":
                    w.WriteStartObject();
                    w.WriteBoolean("ready", true);
                    w.WriteEndObject();
                    break;
                default:
                    response.StatusCode = 404;
                    w.WriteStartObject();
                    w.WriteString("error", $"no such path {path}; try /flows, /config_dump, /ready");
                    w.WriteEndObject();
                    break;
            }
        }

        response.ContentLength64 = body.Length;
        response.OutputStream.Write(body.GetBuffer(), 0, (int)body.Length);
    }

    private static void WriteFlows(Utf8JsonWriter w, string name, IReadOnlyList<Flow> flows)
    {
        w.WriteStartArray(name);
        foreach (var flow in flows)
        {
            flow.WriteJson(w);
        }

        w.WriteEndArray();
    }

    private void WriteConfig(Utf8JsonWriter w)
    {
        var snapshot = _agent.Inventory.Current;
        w.WriteStartObject();
        w.WriteNumber("inventory_version", snapshot.Version);
        w.WriteStartArray("enrolled_pods");
        foreach (var pod in _agent.EnrolledPods.Order())
        {
            w.WriteStringValue(pod.Split('|')[0]);
        }

        w.WriteEndArray();
        w.WriteStartArray("workloads");
        foreach (var workload in snapshot.Workloads)
        {
            w.WriteStartObject();
            w.WriteString("name", $"{workload.Namespace}/{workload.Name}");
            w.WriteString("node", workload.NodeName);
            w.WriteString("service_account", workload.ServiceAccount);
            w.WriteString("ips", string.Join(',', workload.Addresses));
            w.WriteBoolean("enrolled", workload.Enrolled);
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteEndObject();
    }

    public void Dispose()
    {
        try
        {
            _listener.Stop();
            _listener.Close();
        }
        catch (ObjectDisposedException)
        {
        }
    }
}
