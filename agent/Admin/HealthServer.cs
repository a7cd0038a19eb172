using System.Net;
using System.Text;

namespace Weft.Admin;

/// <summary>
/// Kubelet probes on :15021: <c>/healthz</c> answers 200 while the agent runs, <c>/ready</c> answers 200
/// once the inventory is loaded (a Kubernetes source: after its first full sync) and 503 before.
/// </summary>
internal sealed class HealthServer : HttpEndpoint
{
    private readonly Func<bool> _ready;

    public HealthServer(string address, Func<bool> ready)
        : base(Prefix(address), "health")
    {
        _ready = ready;
    }

    protected override async Task ServeAsync(HttpListenerContext context)
    {
        var (status, text) = context.Request.Url?.AbsolutePath switch
        {
            "/healthz" => (200, "ok\n"),
            "/ready" => _ready() ? (200, "ready\n") : (503, "not ready: inventory not synced yet\n"),
            _ => (404, "try /healthz or /ready\n"),
        };
        var body = Encoding.UTF8.GetBytes(text);
        context.Response.StatusCode = status;
        context.Response.ContentType = "text/plain";
        context.Response.ContentLength64 = body.Length;
        await context.Response.OutputStream.WriteAsync(body).ConfigureAwait(false);
    }
}
