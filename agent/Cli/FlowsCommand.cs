using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Weft.Telemetry;

namespace Weft.Cli;

/// <summary>
/// <c>weft flows</c>: the agent's live and recently finished connections, filtered like <c>hubble observe</c>.
/// <code>
///   weft flows ──GET /flows?filters──► admin API ──► table | JSON lines
///   --follow: poll every 250 ms, print a flow when it appears and again whenever its bytes or state change
/// </code>
/// </summary>
internal static class FlowsCommand
{
    public const string Usage = """
        weft flows [--pod NS/NAME] [--from-pod NS/NAME] [--to-pod NS/NAME] [--namespace NS] [--verdict V]
                   [--since 5m|RFC3339] [--last N] [--follow] [-o table|json] [--admin ADDR | --node NAME [--kubeconfig FILE]]
          Connections through this node's agent, live and recently finished. --verdict is forwarded,
          denied, error, or a response flag (DENY, UF, UH, UO, TLS_FAILURE, CONNECT, IDLE_TIMEOUT, UC, DC).
          --follow keeps printing flows as they open, move bytes and close. -o json prints one JSON
          object per line. --admin defaults to 127.0.0.1:15000 (the local agent); --node NAME reaches the
          agent on that node through the Kubernetes API (port-forward; kubeconfig from --kubeconfig,
          $KUBECONFIG or ~/.kube/config; needs the weft-cli Role in weft-system).
        """;

    internal static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>Entry point for Program.cs.</summary>
    public static async Task<int> RunAsync(IEnumerable<string> args)
    {
        using var stop = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.Cancel();
        }

        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        return await RunAsync(args, Console.Out, Console.Error, stop.Token).ConfigureAwait(false);
    }

    public static async Task<int> RunAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken)
    {
        FlowFilter filter;
        bool follow, json;
        AdminTarget target;
        try
        {
            var cl = new CommandLine(ViewsTable.NormalizeShortOptions(args));
            target = AdminTarget.From(cl);
            var output = cl.Get("output") ?? "table";
            if (output is not ("table" or "json"))
            {
                throw new UsageException($"-o wants table or json, got '{output}'");
            }

            json = output == "json";
            follow = cl.Flag("follow");
            var since = cl.Get("since");
            var last = cl.Get("last");
            filter = new FlowFilter
            {
                Pod = PodArgument(cl, "pod"),
                FromPod = PodArgument(cl, "from-pod"),
                ToPod = PodArgument(cl, "to-pod"),
                Namespace = cl.Get("namespace"),
                Verdict = cl.Get("verdict"),
                Since = since is null ? null : FlowFilter.ParseSince(since, DateTimeOffset.UtcNow),
                Last = last is null ? null : int.TryParse(last, out var n) && n > 0 ? n : throw new UsageException($"--last wants a positive whole number, got '{last}'"),
            };
            cl.RejectUnknown();
            if (cl.Positional.Count > 0)
            {
                throw new UsageException($"unexpected argument '{cl.Positional[0]}'");
            }
        }
        catch (Exception e) when (e is UsageException or FormatException)
        {
            await stderr.WriteLineAsync($"weft flows: {e.Message}").ConfigureAwait(false);
            await stderr.WriteLineAsync(Usage).ConfigureAwait(false);
            return 2;
        }

        NodeAgentForward? forward = null;
        try
        {
            forward = await target.ForwardAsync(cancellationToken).ConfigureAwait(false);
            using var client = target.Client(forward);
            if (!follow)
            {
                using var doc = await client.GetAsync("flows" + filter.ToQuery(), cancellationToken).ConfigureAwait(false);
                var flows = FlowsRendering.Read(doc.RootElement);
                await stdout.WriteAsync(json ? FlowsRendering.JsonLines(flows) : FlowsRendering.Table(flows)).ConfigureAwait(false);
                return 0;
            }

            await FollowAsync(client, filter, json, stdout, cancellationToken).ConfigureAwait(false);
            return 0;
        }
        catch (AdminUnreachableException e)
        {
            await stderr.WriteLineAsync($"weft: {AdminTarget.Explain(e, forward)}").ConfigureAwait(false);
            return 1;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return 0;
        }
        finally
        {
            if (forward is not null)
            {
                await forward.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static async Task FollowAsync(AdminClient client, FlowFilter filter, bool json, TextWriter stdout, CancellationToken cancellationToken)
    {
        var printed = new Dictionary<long, (string State, long Sent, long Received)>();
        var headerDone = false;
        var query = filter;
        while (true)
        {
            using var doc = await client.GetAsync("flows" + query.ToQuery(), cancellationToken).ConfigureAwait(false);
            var changed = new List<FlowRecord>();
            foreach (var flow in FlowsRendering.Read(doc.RootElement))
            {
                var now = (flow.State, flow.BytesSent, flow.BytesReceived);
                if (!printed.TryGetValue(flow.Id, out var before) || before != now)
                {
                    printed[flow.Id] = now;
                    changed.Add(flow);
                }
            }

            if (changed.Count > 0)
            {
                var text = json ? FlowsRendering.JsonLines(changed) : FlowsRendering.Table(changed, header: !headerDone);
                headerDone = true;
                await stdout.WriteAsync(text).ConfigureAwait(false);
                await stdout.FlushAsync(cancellationToken).ConfigureAwait(false);
            }

            // Later polls skip what finished long ago; "last" only shapes the first screen.
            var serverNow = doc.RootElement.TryGetProperty("now", out var n) ? n.GetDateTimeOffset() : DateTimeOffset.UtcNow;
            var floor = serverNow - TimeSpan.FromSeconds(2);
            query = filter with { Last = null, Since = filter.Since is { } s && s > floor ? s : floor };
            await Task.Delay(PollInterval, cancellationToken).ConfigureAwait(false);
        }
    }

    private static string? PodArgument(CommandLine cl, string name)
    {
        var value = cl.Get(name);
        if (value is not null && (value.IndexOf('/') is var slash && (slash <= 0 || slash == value.Length - 1)))
        {
            throw new UsageException($"--{name} wants NAMESPACE/NAME, got '{value}'");
        }

        return value;
    }
}

/// <summary>One flow as the admin API reports it; every field kept so JSON output loses nothing.</summary>
internal sealed record FlowRecord(long Id, string State, DateTimeOffset Start, string? SourceWorkload, string Source,
    string? DestinationWorkload, string? Destination, string OriginalDestination, string? DestinationService,
    string ResponseFlags, string Verdict, string SecurityPolicy, long BytesSent, long BytesReceived, double? DurationMs, JsonElement Raw);

internal static class FlowsRendering
{
    public static readonly string[] Headers = ["START", "STATE", "SOURCE", "DESTINATION", "SERVICE", "SECURITY", "FLAGS", "VERDICT", "SENT", "RECEIVED", "DURATION"];

    /// <summary>Live and recent flows of one /flows answer, by start time.</summary>
    public static List<FlowRecord> Read(JsonElement root)
    {
        var list = new List<FlowRecord>();
        foreach (var section in new[] { "live", "recent" })
        {
            if (!root.TryGetProperty(section, out var flows))
            {
                continue;
            }

            foreach (var f in flows.EnumerateArray())
            {
                list.Add(new FlowRecord(
                    f.GetProperty("id").GetInt64(),
                    Text(f, "state") ?? (section == "live" ? "live" : "finished"),
                    f.GetProperty("start").GetDateTimeOffset(),
                    Text(f, "source_workload"),
                    Text(f, "source") ?? "",
                    Text(f, "destination_workload"),
                    Text(f, "destination"),
                    Text(f, "original_destination") ?? "",
                    Text(f, "destination_service"),
                    Text(f, "response_flags") ?? "-",
                    Text(f, "verdict") ?? Flow.VerdictOf(Text(f, "response_flags") ?? "-"),
                    Text(f, "connection_security_policy") ?? "none",
                    f.TryGetProperty("bytes_sent", out var s) ? s.GetInt64() : 0,
                    f.TryGetProperty("bytes_received", out var r) ? r.GetInt64() : 0,
                    f.TryGetProperty("duration_ms", out var d) ? d.GetDouble() : null,
                    f.Clone()));
            }
        }

        return list.OrderBy(f => f.Start).ThenBy(f => f.Id).ToList();
    }

    private static string? Text(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static string Table(IReadOnlyList<FlowRecord> flows, bool header = true)
    {
        var rows = flows.Select(f => (IReadOnlyList<string>)
        [
            f.Start.UtcDateTime.ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture),
            f.State,
            f.SourceWorkload ?? f.Source,
            f.DestinationWorkload ?? f.Destination ?? f.OriginalDestination,
            f.DestinationService ?? "-",
            f.SecurityPolicy == "mutual_tls" ? "mTLS" : "plaintext",
            f.ResponseFlags,
            f.Verdict,
            ViewsTable.Bytes(f.BytesSent),
            ViewsTable.Bytes(f.BytesReceived),
            Duration(f.DurationMs),
        ]);
        var text = ViewsTable.Render(Headers, rows);
        return header ? text : text[(text.IndexOf('\n') + 1)..];
    }

    /// <summary>One compact JSON object per flow, exactly as the agent reported it.</summary>
    public static string JsonLines(IReadOnlyList<FlowRecord> flows)
    {
        var options = new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using var buffer = new MemoryStream();
        foreach (var flow in flows)
        {
            using (var w = new Utf8JsonWriter(buffer, options))
            {
                flow.Raw.WriteTo(w);
            }

            buffer.WriteByte((byte)'\n');
        }

        return System.Text.Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    private static string Duration(double? ms) => ms switch
    {
        null => "-",
        < 1000 => string.Create(CultureInfo.InvariantCulture, $"{ms:0}ms"),
        < 60_000 => string.Create(CultureInfo.InvariantCulture, $"{ms / 1000:0.0}s"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{ms / 60_000:0.0}m"),
    };
}
