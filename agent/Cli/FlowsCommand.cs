using System.CommandLine;
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
    /// <summary>Verdicts and response flags --verdict matches, offered by shell completion.</summary>
    public static readonly string[] Verdicts = ["forwarded", "denied", "error", "DENY", "UF", "UH", "UO", "TLS_FAILURE", "CONNECT", "IDLE_TIMEOUT", "UC", "DC", "LOOP", "NO_CERTIFICATE"];

    private static readonly Option<string?> Pod = new("--pod") { HelpName = "NS/NAME", Description = "Flows from or to this pod." };
    private static readonly Option<string?> FromPod = new("--from-pod") { HelpName = "NS/NAME", Description = "Flows from this pod." };
    private static readonly Option<string?> ToPod = new("--to-pod") { HelpName = "NS/NAME", Description = "Flows to this pod." };
    private static readonly Option<string?> Verdict = VerdictOption();
    private static readonly Option<string?> Since = new("--since") { HelpName = "5m|RFC3339", Description = "Flows that started after this (a duration ago, or a time)." };
    private static readonly Option<int?> Last = new("--last") { HelpName = "N", Description = "Only the N most recent flows." };
    private static readonly Option<bool> Follow = new("--follow", "-f") { Description = "Keep printing flows as they open, move bytes and close, until Ctrl-C." };

    internal static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);

    public static Command Create()
    {
        var command = new Command("flows", "Connections through this node's agent, live and recently finished, filtered like `hubble observe`.")
        {
            Pod, FromPod, ToPod, CliOptions.Namespace, Verdict, Since, Last, Follow, CliOptions.Output,
        };
        AdminTarget.AddOptions(command);
        command.SetAction((result, cancellationToken) => RunAsync(result, cancellationToken));
        WeftCli.Examples(
            command,
            "weft flows --verdict denied --since 10m",
            "weft flows --follow --from-pod demo/a1 -o json",
            "weft flows --node worker-2 --namespace demo");
        return command;
    }

    private static Option<string?> VerdictOption()
    {
        var option = new Option<string?>("--verdict")
        {
            HelpName = "V",
            Description = "forwarded, denied, error, or a response flag (DENY, UF, UH, UO, TLS_FAILURE, CONNECT, IDLE_TIMEOUT, UC, DC, LOOP).",
        };
        option.CompletionSources.Add(Verdicts);
        return option;
    }

    /// <summary>Runs <c>weft flows ARGS</c> with its output in the given writers (tests, and nothing else, call this).</summary>
    public static Task<int> RunAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken) =>
        WeftCli.RunAsync(["flows", .. args], stdout, stderr, cancellationToken);

    private static async Task<int> RunAsync(ParseResult cl, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.Cancel();
        }

        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        var stdout = cl.InvocationConfiguration.Output;
        var stderr = cl.InvocationConfiguration.Error;
        cancellationToken = stop.Token;

        var target = AdminTarget.From(cl);
        var json = cl.GetRequiredValue(CliOptions.Output) == "json";
        var follow = cl.GetValue(Follow);
        var since = cl.GetValue(Since);
        var last = cl.GetValue(Last);
        FlowFilter filter;
        try
        {
            filter = new FlowFilter
            {
                Pod = PodArgument(cl, Pod),
                FromPod = PodArgument(cl, FromPod),
                ToPod = PodArgument(cl, ToPod),
                Namespace = cl.GetValue(CliOptions.Namespace),
                Verdict = cl.GetValue(Verdict),
                Since = since is null ? null : FlowFilter.ParseSince(since, DateTimeOffset.UtcNow),
                Last = last is null or > 0 ? last : throw new UsageException($"--last wants a positive whole number, got '{last}'"),
            };
        }
        catch (FormatException e)
        {
            throw new UsageException(e.Message);
        }

        PodPortForward? forward = null;
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

    private static string? PodArgument(ParseResult cl, Option<string?> option)
    {
        var value = cl.GetValue(option);
        if (value is not null && (value.IndexOf('/') is var slash && (slash <= 0 || slash == value.Length - 1)))
        {
            throw new UsageException($"{option.Name} wants NAMESPACE/NAME, got '{value}'");
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
