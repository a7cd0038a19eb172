using System.CommandLine;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Weft.Cli;

/// <summary>The agent's admin API could not be reached or answered with an error: one line for the user.</summary>
internal sealed class AdminUnreachableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Reads the local agent's admin API (127.0.0.1:15000 unless told otherwise).</summary>
internal sealed class AdminClient : IDisposable
{
    public const string DefaultAddress = "127.0.0.1:15000";

    private readonly HttpClient _http;
    private readonly string? _via;

    /// <param name="address">host:port the HTTP requests go to.</param>
    /// <param name="via">How to name the agent in errors when <paramref name="address"/> is a local port-forward (--node).</param>
    public AdminClient(string address, string? via = null)
    {
        Address = via ?? address;
        _via = via;
        _http = new HttpClient { BaseAddress = new Uri($"http://{address}/"), Timeout = TimeSpan.FromSeconds(5) };
    }

    public string Address { get; }

    public async Task<JsonDocument> GetAsync(string pathAndQuery, CancellationToken cancellationToken = default)
    {
        HttpResponseMessage response;
        try
        {
            response = await _http.GetAsync(pathAndQuery, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            var why = e.InnerException is SocketException s ? Describe(s.SocketErrorCode) : e.Message;
            throw new AdminUnreachableException(_via is null
                ? $"cannot reach the Weft agent's admin API at {Address}: {why}. Is the agent running on this node? Point at it with --admin HOST:PORT."
                : $"cannot reach the Weft agent's admin API at {Address}: {why}.", e);
        }
        catch (HttpIOException e)
        {
            throw new AdminUnreachableException($"the connection to the Weft agent's admin API at {Address} broke: {e.Message}", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new AdminUnreachableException($"the Weft agent's admin API at {Address} did not answer within {_http.Timeout.TotalSeconds:0}s.", e);
        }

        using (response)
        {
            var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                var error = TryError(body) ?? body.Trim();
                throw new AdminUnreachableException($"the agent at {Address} answered {(int)response.StatusCode}: {error}");
            }

            try
            {
                return JsonDocument.Parse(body);
            }
            catch (JsonException e)
            {
                throw new AdminUnreachableException($"{Address} answered something that is not the Weft admin API: {e.Message}", e);
            }
        }
    }

    private static string? TryError(string body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            return doc.RootElement.TryGetProperty("error", out var e) ? e.GetString() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static string Describe(SocketError error) => error switch
    {
        SocketError.ConnectionRefused => "connection refused",
        SocketError.HostUnreachable or SocketError.NetworkUnreachable => "no route to it",
        SocketError.TimedOut => "timed out",
        _ => error.ToString(),
    };

    public void Dispose() => _http.Dispose();
}

/// <summary>Aligned columns separated by two spaces, as <c>istioctl ztunnel-config</c> prints them.</summary>
internal static class ViewsTable
{
    public static string Render(IReadOnlyList<string> headers, IEnumerable<IReadOnlyList<string>> rows)
    {
        var all = new List<IReadOnlyList<string>> { headers };
        all.AddRange(rows);
        var widths = new int[headers.Count];
        foreach (var row in all)
        {
            for (var i = 0; i < widths.Length; i++)
            {
                widths[i] = Math.Max(widths[i], row[i].Length);
            }
        }

        var text = new StringBuilder();
        foreach (var row in all)
        {
            for (var i = 0; i < widths.Length; i++)
            {
                if (i == widths.Length - 1)
                {
                    text.Append(row[i]);
                }
                else
                {
                    text.Append(row[i].PadRight(widths[i] + 2));
                }
            }

            text.Append('\n');
        }

        return text.ToString();
    }

    /// <summary>1023B, 1.5KiB, 12.0MiB: bytes as people read them.</summary>
    public static string Bytes(long n)
    {
        string[] units = ["KiB", "MiB", "GiB", "TiB"];
        if (n < 1024)
        {
            return $"{n}B";
        }

        double value = n;
        var unit = -1;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{value:0.0}{units[unit]}");
    }
}

/// <summary>Options several commands share, so each is spelled and explained once.</summary>
internal static class CliOptions
{
    public static readonly Option<string> Output = new Option<string>("--output", "-o")
    {
        HelpName = "table|json",
        Description = "table: aligned columns; json: every field (flows: one object per line).",
        DefaultValueFactory = _ => "table",
    }.AcceptOnlyFromAmong("table", "json");

    public static readonly Option<string?> Namespace = new("--namespace", "-n") { HelpName = "NS", Description = "Only this namespace." };
}

/// <summary>Which agent a CLI command reads: --admin HOST:PORT (default the local agent) or --node NAME through the Kubernetes API.</summary>
internal sealed record AdminTarget(string Admin, string? Node, string? Kubeconfig)
{
    private static readonly Option<string?> AdminOption = new("--admin") { HelpName = "ADDR", Description = $"The agent's admin API [default: {AdminClient.DefaultAddress}, the local agent]" };
    private static readonly Option<string?> NodeOption = new("--node") { HelpName = "NAME", Description = "Ask the agent on this node through the Kubernetes API (port-forward; needs the weft-cli Role in weft-system)." };
    private static readonly Option<string?> KubeconfigOption = new("--kubeconfig") { HelpName = "FILE", Description = "Kubeconfig for --node [default: $KUBECONFIG, then ~/.kube/config]" };

    public static void AddOptions(Command command)
    {
        command.Add(AdminOption);
        command.Add(NodeOption);
        command.Add(KubeconfigOption);
    }

    /// <param name="cluster">The command reaches the API server itself (<c>weft check --cluster</c>): --kubeconfig applies without --node.</param>
    public static AdminTarget From(ParseResult cl, bool cluster = false)
    {
        var admin = cl.GetValue(AdminOption);
        var node = cl.GetValue(NodeOption);
        var kubeconfig = cl.GetValue(KubeconfigOption);
        if (node is not null && admin is not null)
        {
            throw new UsageException("--node and --admin both say which agent to ask: give one");
        }

        if (cl.GetResult(NodeOption) is not null && string.IsNullOrEmpty(node))
        {
            throw new UsageException("--node wants a node name");
        }

        if (kubeconfig is not null && node is null && !cluster)
        {
            throw new UsageException(cl.CommandResult.Command.Options.Any(o => o.Name == "--cluster")
                ? "--kubeconfig only applies with --node NAME or --cluster" : "--kubeconfig only applies with --node NAME");
        }

        return new AdminTarget(admin ?? AdminClient.DefaultAddress, node, kubeconfig);
    }

    /// <summary>Opens the port-forward for --node; null when the agent is reached directly.</summary>
    public async Task<PodPortForward?> ForwardAsync(CancellationToken cancellationToken) =>
        Node is null ? null : await PodPortForward.OpenAsync(Node, Kubeconfig, cancellationToken).ConfigureAwait(false);

    public AdminClient Client(PodPortForward? forward) => forward is null
        ? new AdminClient(Admin)
        : new AdminClient(forward.Address, $"node {forward.Node} (pod {PodPortForward.Namespace}/{forward.Pod}, port-forward)");

    /// <summary>The port-forward's own complaint (from the kubelet) says more than "connection closed".</summary>
    public static string Explain(AdminUnreachableException e, PodPortForward? forward) =>
        forward?.LastError is { } error
            ? $"port-forward to {PodPortForward.Namespace}/{forward.Pod} on node '{forward.Node}' port {PodPortForward.AdminPort} failed: {error.Split('\n')[0].Trim()}"
            : e.Message;
}
