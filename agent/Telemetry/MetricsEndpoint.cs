using System.Net;

namespace Weft.Telemetry;

/// <summary>
/// Serves the Prometheus text exposition on <c>/metrics</c> (and <c>/stats/prometheus</c>, the path
/// Istio's scrape annotations use) at the node's metrics address, :15020 by default.
/// </summary>
internal sealed class MetricsEndpoint : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly MeshMetrics _metrics;

    /// <param name="address">"host:port"; an empty host or "*" or "0.0.0.0" means every address.</param>
    public MetricsEndpoint(string address, MeshMetrics metrics)
    {
        _metrics = metrics;
        _listener.Prefixes.Add($"http://{Prefix(address)}/");
    }

    internal static string Prefix(string address)
    {
        var colon = address.LastIndexOf(':');
        if (colon < 0 || !int.TryParse(address.AsSpan(colon + 1), out var port) || port is <= 0 or > 65535)
        {
            throw new ArgumentException($"metrics address wants host:port (or :port for every address), got '{address}'");
        }

        var host = address[..colon];
        return (host is "" or "*" or "0.0.0.0" or "[::]" ? "+" : host) + ":" + port;
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

            _ = Task.Run(() => ServeAsync(context));
        }
    }

    private async Task ServeAsync(HttpListenerContext context)
    {
        var response = context.Response;
        try
        {
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
        catch (Exception e)
        {
            Log.Warn("metrics", $"scrape failed: {e.Message}");
        }
        finally
        {
            try
            {
                response.Close();
            }
            catch (Exception)
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
        catch (Exception e) when (e is ObjectDisposedException or HttpListenerException)
        {
        }
    }
}
