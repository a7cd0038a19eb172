using System.CommandLine;
using System.Net.Sockets;
using System.Text.Json;

namespace Weft.Cli;

/// <summary><c>weft routes</c>: which route of a running <c>weft gateway</c> serves which host and path, read from its admin endpoint.</summary>
internal static class RoutesCommand
{
    public const string DefaultAdmin = "127.0.0.1:15080";

    private static readonly Option<string> Admin = new("--admin") { HelpName = "ADDR", Description = "The gateway's admin endpoint (weft gateway --admin).", DefaultValueFactory = _ => DefaultAdmin };

    public static Command Create()
    {
        var command = new Command("routes", "Which route of a running weft gateway serves which host and path, in the order they are tried, with backends and warnings.")
        {
            Admin, CliOptions.Output,
        };
        command.SetAction(RunAsync);
        WeftCli.Examples(command, "weft routes", "weft routes --admin 127.0.0.1:15080 -o json");
        return command;
    }

    private static async Task<int> RunAsync(ParseResult cl, CancellationToken cancellationToken)
    {
        var stdout = cl.InvocationConfiguration.Output;
        var stderr = cl.InvocationConfiguration.Error;
        var admin = cl.GetRequiredValue(Admin);
        string body;
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) })
        {
            try
            {
                using var response = await http.GetAsync(new Uri($"http://{admin}/routes?format=json"), cancellationToken).ConfigureAwait(false);
                body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    await stderr.WriteLineAsync($"weft: the gateway admin endpoint at {admin} answered {(int)response.StatusCode}").ConfigureAwait(false);
                    return WeftCli.Failure;
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or UriFormatException && !cancellationToken.IsCancellationRequested)
            {
                var why = e.InnerException is SocketException s ? s.SocketErrorCode.ToString() : e.Message;
                await stderr.WriteLineAsync($"weft: cannot reach a gateway admin endpoint at {admin}: {why}. Is `weft gateway` running? Point at its --admin with --admin HOST:PORT.").ConfigureAwait(false);
                return WeftCli.Failure;
            }
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(body);
        }
        catch (JsonException e)
        {
            await stderr.WriteLineAsync($"weft: {admin} answered something that is not a weft gateway's route table: {e.Message}").ConfigureAwait(false);
            return WeftCli.Failure;
        }

        using (doc)
        {
            await stdout.WriteAsync(cl.GetRequiredValue(CliOptions.Output) == "json" ? body.TrimEnd() + "\n" : Table(doc.RootElement)).ConfigureAwait(false);
        }

        return 0;
    }

    /// <summary>
    /// LISTENER HOST PATH MATCH ROUTE TIMEOUTS BACKENDS for --http and --https, then one such table per Gateway served on
    /// an address of its own (--gateway-http, --gateway-https) with the routes that address serves, then the config error
    /// and warnings.
    /// </summary>
    internal static string Table(JsonElement table)
    {
        var text = Routes(table.GetProperty("routes"));

        // A gateway that predates per-Gateway addresses has no "gateways".
        if (table.TryGetProperty("gateways", out var gateways))
        {
            foreach (var gateway in gateways.EnumerateArray())
            {
                var addresses = string.Join(", ", new[] { ("http", gateway.GetProperty("http")), ("https", gateway.GetProperty("https")) }
                    .Where(a => a.Item2.ValueKind == JsonValueKind.String).Select(a => $"{a.Item1}://{a.Item2.GetString()}"));
                text += $"\nGateway {gateway.GetProperty("gateway").GetString()} on {addresses}"
                    + (gateway.GetProperty("known").GetBoolean() ? "" : " (no such Gateway of class weft: 404)") + ":\n"
                    + Routes(gateway.GetProperty("routes"));
            }
        }

        if (table.GetProperty("configError").GetString() is { } error)
        {
            text = $"config error (serving the last good version): {error}\n" + text;
        }

        foreach (var warning in table.GetProperty("warnings").EnumerateArray())
        {
            text += $"warning: {warning.GetString()}\n";
        }

        return text;
    }

    private static string Routes(JsonElement routes)
    {
        var rows = new List<IReadOnlyList<string>>();
        foreach (var route in routes.EnumerateArray())
        {
            var conditions = new List<string>();
            if (route.GetProperty("method").GetString() is { } method)
            {
                conditions.Add(method);
            }

            var headers = route.GetProperty("headers").EnumerateArray().Select(h => h.GetString()).ToList();
            if (headers.Count > 0)
            {
                conditions.Add("headers " + string.Join(',', headers));
            }

            var query = route.GetProperty("query").EnumerateArray().Select(q => q.GetString()).ToList();
            if (query.Count > 0)
            {
                conditions.Add("query " + string.Join(',', query));
            }

            var backends = route.TryGetProperty("redirect", out var redirect)
                ? $"redirect {redirect.GetInt32()}"
                : string.Join(", ", route.GetProperty("backends").EnumerateArray().Select(Backend));
            rows.Add([
                route.GetProperty("listener").GetString()!,
                route.GetProperty("host").GetString()!,
                $"{route.GetProperty("pathType").GetString()} {route.GetProperty("path").GetString()}",
                conditions.Count == 0 ? "-" : string.Join(' ', conditions),
                route.GetProperty("source").GetString()!,
                Timeouts(route),
                backends.Length == 0 ? "(none: 500)" : backends,
            ]);
        }

        return ViewsTable.Render(["LISTENER", "HOST", "PATH", "MATCH", "ROUTE", "TIMEOUTS", "BACKENDS"], rows);
    }

    /// <summary>"request 10s, backend 2s", or "-" (also from a gateway that predates timeouts).</summary>
    private static string Timeouts(JsonElement route)
    {
        if (!route.TryGetProperty("timeouts", out var timeouts) || timeouts.ValueKind != JsonValueKind.Object)
        {
            return "-";
        }

        var parts = new List<string>();
        if (timeouts.TryGetProperty("request", out var request) && request.GetString() is { } r)
        {
            parts.Add($"request {r}");
        }

        if (timeouts.TryGetProperty("backendRequest", out var backend) && backend.GetString() is { } b)
        {
            parts.Add($"backend {b}");
        }

        return parts.Count == 0 ? "-" : string.Join(", ", parts);
    }

    private static string Backend(JsonElement backend)
    {
        var name = backend.GetProperty("name").GetString()!;
        if (backend.GetProperty("invalid").GetString() is { } invalid)
        {
            return $"{name} (invalid: {invalid})";
        }

        var weight = backend.GetProperty("weight").GetInt32();
        var endpoints = backend.GetProperty("endpoints").GetArrayLength();
        return $"{name} ({endpoints} endpoints{(weight == 1 ? "" : $", weight {weight}")})";
    }
}
