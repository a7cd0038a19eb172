using System.Net;
using System.Text;

namespace Weft.Admin;

/// <summary>
/// Kubelet probes on :15021: <c>/healthz</c> answers 200 while the agent runs, <c>/ready</c> answers 200
/// once the inventory is loaded (a Kubernetes source: after its first full sync) and 503 before.
/// </summary>
internal sealed class HealthServer : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Func<bool> _ready;

    public HealthServer(string address, Func<bool> ready)
    {
        _ready = ready;
        _listener.Prefixes.Add($"http://{Weft.Telemetry.MetricsEndpoint.Prefix(address)}/");
    }

    public void Start()
    {
        _listener.Start();
        _ = Task.Run(LoopAsync);
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

            var (status, text) = context.Request.Url?.AbsolutePath switch
            {
                "/healthz" => (200, "ok\n"),
                "/ready" => _ready() ? (200, "ready\n") : (503, "not ready: inventory not synced yet\n"),
                _ => (404, "try /healthz or /ready\n"),
            };
            var body = Encoding.UTF8.GetBytes(text);
            try
            {
                context.Response.StatusCode = status;
                context.Response.ContentType = "text/plain";
                context.Response.ContentLength64 = body.Length;
                await context.Response.OutputStream.WriteAsync(body).ConfigureAwait(false);
                context.Response.Close();
            }
            catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException)
            {
            }
        }
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
