using System.Net;

namespace Weft.Admin;

/// <summary>
/// One HTTP listener of the agent (admin API, metrics, probes): accepts requests and answers each on
/// its own task, so a slow reader (<c>weft flows --follow</c>, a scraper) never holds up the others.
/// A failing answer is logged and closes only its own response.
/// </summary>
internal abstract class HttpEndpoint : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly string _component;

    /// <param name="prefix">An HttpListener prefix, e.g. "http://127.0.0.1:15000/".</param>
    protected HttpEndpoint(string prefix, string component)
    {
        _listener.Prefixes.Add(prefix);
        _component = component;
    }

    /// <summary>"host:port" as a listener prefix; an empty host, "*", "0.0.0.0" or "[::]" means every address.</summary>
    public static string Prefix(string address)
    {
        var colon = address.LastIndexOf(':');
        if (colon < 0 || !int.TryParse(address.AsSpan(colon + 1), out var port) || port is <= 0 or > 65535)
        {
            throw new ArgumentException($"address wants host:port (or :port for every address), got '{address}'");
        }

        var host = address[..colon];
        return $"http://{(host is "" or "*" or "0.0.0.0" or "[::]" ? "+" : host)}:{port}/";
    }

    public void Start()
    {
        _listener.Start();
        _ = Task.Run(LoopAsync);
    }

    /// <summary>Answers one request; the response is closed afterwards whatever happens.</summary>
    protected abstract Task ServeAsync(HttpListenerContext context);

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

            _ = Task.Run(() => AnswerAsync(context));
        }
    }

    private async Task AnswerAsync(HttpListenerContext context)
    {
        try
        {
            await ServeAsync(context).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log.Warn(_component, $"{context.Request.Url?.AbsolutePath}: {e.Message}");
        }
        finally
        {
            try
            {
                context.Response.Close();
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
