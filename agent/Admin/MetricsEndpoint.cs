using System.Net;
using Weft.Telemetry;

namespace Weft.Admin;

/// <summary>
/// Serves the Prometheus text exposition on <c>/metrics</c> (and <c>/stats/prometheus</c>, the path
/// Istio's scrape annotations use) at the node's metrics address, :15020 by default.
/// </summary>
internal sealed class MetricsEndpoint : HttpEndpoint
{
    private readonly MeshMetrics _metrics;

    /// <param name="address">"host:port"; an empty host or "*" or "0.0.0.0" means every address.</param>
    public MetricsEndpoint(string address, MeshMetrics metrics)
        : base(Prefix(address), "metrics")
    {
        _metrics = metrics;
    }

    protected override async Task ServeAsync(HttpListenerContext context)
    {
        var response = context.Response;
        var path = context.Request.Url?.AbsolutePath ?? "/";
        if (path is not ("/metrics" or "/stats/prometheus"))
        {
            response.StatusCode = 404;
            return;
        }

        response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        using var buffer = new MemoryStream();
        await _metrics.Registry.CollectAndExportAsTextAsync(buffer).ConfigureAwait(false);
        response.ContentLength64 = buffer.Length;
        await response.OutputStream.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length)).ConfigureAwait(false);
    }
}
