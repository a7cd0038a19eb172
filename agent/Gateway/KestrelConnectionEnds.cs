using System.Diagnostics.Metrics;

namespace Weft.Gateway;

/// <summary>
/// Counts the client connections Kestrel ended on one of its limits (minimum response or request body rate,
/// request headers timeout, keep-alive timeout, ...) in <c>weft_gateway_client_disconnects_total</c>, by the
/// <c>error.type</c> Kestrel records on <c>kestrel.connection.duration</c> when a connection ends: Kestrel's own
/// meter is the one place it says why it closed a connection. Only this gateway's Kestrel is listened to (the
/// meter's scope is the gateway's own meter factory), so several gateways in one process count apart; the
/// callback runs once per connection, never per request.
/// </summary>
internal sealed class KestrelConnectionEnds : IDisposable
{
    private readonly MeterListener _listener = new();

    public KestrelConnectionEnds(IMeterFactory gatewayMeters, GatewayMetrics metrics)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == "Microsoft.AspNetCore.Server.Kestrel" && instrument.Name == "kestrel.connection.duration"
                && ReferenceEquals(instrument.Meter.Scope, gatewayMeters))
            {
                listener.EnableMeasurementEvents(instrument, metrics);
            }
        };
        _listener.SetMeasurementEventCallback<double>(static (_, _, tags, state) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "error.type" && tag.Value is string reason)
                {
                    ((GatewayMetrics)state!).ClientCut(reason);
                }
            }
        });
        _listener.Start();
    }

    public void Dispose() => _listener.Dispose();
}
